//! The fixture of `tests/compile_fail.rs`: the derive on the service's `shipments`, built as a
//! crate of its own. With the feature `wrong_column` one field names a column the table lacks,
//! and the build must fail for that reason; without it, the same crate must build.

use time::OffsetDateTime;

/// `shipments` as the service's own crate has it, or with one misspelt column.
#[derive(Debug, Clone, PartialEq, sqlrepo::Table)]
#[table(name = "shipments")]
pub struct Shipment {
    /// The id.
    pub id: i64,
    /// The order shipped.
    pub order_id: i64,
    /// The address.
    #[cfg(not(feature = "wrong_column"))]
    pub address: String,
    /// The address, misspelt: no such column.
    #[cfg(feature = "wrong_column")]
    pub adress: String,
    /// When it was recorded.
    #[table(created_at)]
    pub created_at: OffsetDateTime,
}
