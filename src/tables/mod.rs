//! The repository layer: one module per table, each holding its data types, its repository and
//! all of its SQL. Repositories depend only on the connection layer ([`Handle`](crate::Handle),
//! [`Conn`](crate::Conn)) and below; they never import each other's repositories or
//! [`Db`](crate::Db).

pub mod accounts;
pub mod dashboard;
pub mod items;
pub mod orders;
pub(crate) mod paging;
pub mod users;
