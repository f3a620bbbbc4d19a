//! `#[derive(Table)]`, re-exported as `sqlrepo::Table`: a repository of sqlrepo's shape for a
//! service's own SQLite table, every statement a `sqlx::query!` literal checked in the
//! service's crate. Its documentation, with an example, is on `sqlrepo::Table`.

mod sql;
mod table;

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{DeriveInput, parse_macro_input};

use table::Table;

/// A repository of sqlrepo's shape for a service's own SQLite table, from its row struct.
///
/// ```ignore
/// use time::OffsetDateTime;
///
/// #[derive(Debug, Clone, PartialEq, sqlrepo::Table)]
/// #[table(name = "shipments", validate = NewShipment::validate)]
/// pub struct Shipment {
///     pub id: i64,                     // INTEGER PRIMARY KEY
///     pub order_id: i64,
///     pub address: String,
///     pub note: Option<String>,        // a nullable column
///     #[table(created_at)]
///     pub created_at: OffsetDateTime,  // written as now, in sqlrepo's timestamp form
/// }
///
/// let shipments = ShipmentRepo::new(db.handle());  // or tx.handle(), inside a Tx
/// let id = shipments.create(&NewShipment::new(order_id, "1 Main St", None)).await?;
/// ```
///
/// The example service (`examples/service/src/shipments.rs`) is this, compiled and tested.
///
/// # What it generates
/// - `NewShipment` (every field but the id and the timestamps, with `new(…)` taking them in
///   field order) and `ShipmentPatch` (each of those fields as an `Option`, `Option<Option<T>>`
///   for a nullable one; `Default`, `is_empty`).
/// - `ShipmentRepo::new(Handle)` and `create`, `get`, `get_many`, `update` (one statement,
///   `true` when a value changed), `delete`, `count`, `insert_many` (one `json_each`
///   statement per byte-bounded chunk, all or nothing), `page(after, limit)` and `stream`
///   (keyset, bounded by rows and bytes). Each future owns its arguments (`tokio::spawn`
///   works), each call is a `sqlrepo` span, each error a `sqlrepo::Error`.
/// - When every field is an `i64`, `i32`, `bool`, `f64`, `String`, `Vec<u8>` or
///   `OffsetDateTime` (or an `Option` of one), `get` reads on the caller's thread as sqlrepo's
///   own gets do (`Handle::read_direct`, the text of the same checked `query!`), and reads the
///   ordinary way whenever that gives up; a row with a field of another type always reads the
///   ordinary way.
/// - Every statement is a `sqlx::query!` literal expanded in the service's crate: sqlx checks
///   it against the service's database (or its `.sqlx/`, which `cargo sqlx prepare` records),
///   so a column the table lacks, or a field whose type the column's does not match, fails
///   the build. The service depends on `sqlx` (0.9, `sqlite` and `macros`) itself.
///
/// # Attributes
/// On the struct, `#[table(…)]`: `name = "shipments"` (required); `repo`, `new`, `patch` to
/// rename the generated types (default `ShipmentRepo`, `NewShipment`, `ShipmentPatch`);
/// `validate = path` for a `fn(&NewShipment) -> sqlrepo::Result<()>` that `create` and
/// `insert_many` call before the database is touched (a batch names the failing row by
/// position); `noun = "shipment"` for those messages; `new_derive(serde::Deserialize, …)` for
/// further derives of the new-row type (it always has `Debug`, `Clone`, `PartialEq`).
///
/// On a field: `#[table(id)]` for the key when it is not named `id` (an `i64`, the rowid);
/// `#[table(created_at)]` for a timestamp written as now (`strftime('%Y-%m-%dT%H:%M:%fZ',
/// 'now')`) and decoded as the field's type; `#[table(as_field_type)]` to decode a column
/// into the field's own type (sqlx's `"col: Type"` override: `bool` in a `STRICT` table, a
/// timestamp in a `TEXT` column) where sqlx's inferred type would not match.
///
/// # What it does not do
/// SQLite only: on a PostgreSQL `Db` its calls fail with the wrong-backend error. `insert_many`
/// sends each row as JSON, so the new-row fields must serialize to what the column stores
/// (numbers, strings, booleans, null): not `BLOB` columns. Field names are the column names.
#[proc_macro_derive(Table, attributes(table))]
pub fn derive_table(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match Table::parse(&input) {
        Ok(table) => expand(&table).into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(t: &Table) -> proc_macro2::TokenStream {
    let Table {
        row,
        vis,
        name,
        repo,
        new,
        patch,
        noun,
        ..
    } = t;
    let id = &t.id().ident;
    let all: Vec<_> = t.columns.iter().map(|c| &c.ident).collect();
    let data: Vec<_> = t.data().collect();
    let d: Vec<_> = data.iter().map(|c| &c.ident).collect();
    let d_ty: Vec<_> = data.iter().map(|c| &c.ty).collect();
    let new_params: Vec<_> = data
        .iter()
        .map(|c| {
            let (ident, ty) = (&c.ident, &c.ty);
            // `impl Into` for a plain field (`"text"` for a `String`); an `Option` field takes
            // its own type, so that a bare `None` needs no annotation.
            if c.inner.is_some() {
                quote!(#ident: #ty)
            } else {
                quote!(#ident: impl ::std::convert::Into<#ty>)
            }
        })
        .collect();
    let new_inits: Vec<_> = data
        .iter()
        .map(|c| {
            let ident = &c.ident;
            if c.inner.is_some() {
                quote!(#ident)
            } else {
                quote!(#ident: ::std::convert::Into::into(#ident))
            }
        })
        .collect();
    let patch_values: Vec<_> = data
        .iter()
        .map(|c| {
            let ident = &c.ident;
            if c.inner.is_some() {
                quote!(patch.#ident.as_ref().and_then(|value| value.as_ref()))
            } else {
                quote!(patch.#ident.as_ref())
            }
        })
        .collect();
    let validate = match &t.validate {
        Some(path) => quote!(#path),
        None => quote!(|_: &#new| ::sqlrepo::Result::<()>::Ok(())),
    };
    let build_row = quote!(#row { #(#all: record.#all),* });
    let direct_get = direct_get(t, &sql::select_one(t));

    let insert_one = sql::insert_one(t);
    let insert_batch = sql::insert_batch(t);
    let select_one = sql::select_one(t);
    let select_many = sql::select_many(t);
    let select_page = sql::select_page(t);
    let update = sql::update(t);
    let delete = sql::delete(t);
    let count = sql::count(t);

    let new_doc = format!(
        "A new row of `{name}`, for [`{repo}::create`] and [`{repo}::insert_many`] (generated \
         by `#[derive(sqlrepo::Table)]` on [`{row}`]): every column but the id and the \
         timestamps."
    );
    let patch_doc = format!(
        "A partial update of a `{name}` row, for [`{repo}::update`]: `Some` sets the column \
         (`Some(None)` clears a nullable one), `None` keeps it (generated by \
         `#[derive(sqlrepo::Table)]` on [`{row}`])."
    );
    let repo_doc = format!(
        "The repository of `{name}` (generated by `#[derive(sqlrepo::Table)]` on [`{row}`]): \
         sqlrepo's repository shape, on a [`Handle`](::sqlrepo::Handle) of a `Db` or of a \
         `Tx`. Every method validates and copies its arguments when called and returns a future \
         that owns them; every call is a `sqlrepo` tracing span (table `{name}`); every error is \
         a [`sqlrepo::Error`](::sqlrepo::Error)."
    );
    let new_derive = &t.new_derive;
    let page_fn = format_ident!("__sqlrepo_read_page");

    quote! {
        #[doc = #new_doc]
        #[derive(Debug, Clone, PartialEq #(, #new_derive)*)]
        #vis struct #new {
            #(
                #[doc = "The column of the same name."]
                pub #d: #d_ty,
            )*
        }

        impl #new {
            /// The new row, field by field in the order of the row struct.
            #[allow(clippy::too_many_arguments)]
            pub fn new(#(#new_params),*) -> Self {
                #new { #(#new_inits),* }
            }
        }

        #[doc = #patch_doc]
        #[derive(Debug, Clone, Default, PartialEq)]
        #vis struct #patch {
            #(
                #[doc = "The column of the same name, when `Some`."]
                pub #d: ::std::option::Option<#d_ty>,
            )*
        }

        impl #patch {
            /// Whether the patch sets no column (then `update` touches nothing).
            pub fn is_empty(&self) -> bool {
                true #(&& self.#d.is_none())*
            }
        }

        #[doc = #repo_doc]
        #[derive(Clone, Debug)]
        #vis struct #repo {
            handle: ::sqlrepo::Handle,
        }

        impl #repo {
            /// The repository on `handle`: a `Db`'s, or a `Tx`'s to work inside that
            /// transaction.
            pub fn new(handle: ::sqlrepo::Handle) -> Self {
                #repo { handle }
            }

            /// Inserts a row and returns its id (timestamps written as now).
            ///
            /// # Errors
            /// What the `validate` function refuses, before the database is touched; what the
            /// schema refuses (a duplicate, a missing parent, a `CHECK`), with nothing written.
            pub fn create(
                &self,
                new: &#new,
            ) -> impl ::std::future::Future<Output = ::sqlrepo::Result<i64>> + Send + use<> {
                let handle = self.handle.clone();
                let checked = (#validate)(new).map(|()| ::std::clone::Clone::clone(new));
                ::sqlrepo::kit::traced(#name, "create", async move {
                    let new = checked?;
                    let mut conn = handle.writer().await?;
                    // `execute` steps the statement to its end, where an autocommit write
                    // commits: a failed commit is the caller's error.
                    let done = ::sqlx::query!(#insert_one, #(new.#d),*)
                        .execute(conn.statements()?)
                        .await?;
                    ::sqlrepo::Result::Ok(done.last_insert_rowid())
                })
            }

            /// Inserts every row, all or nothing, and returns how many were written (ids
            /// follow the slice order); `&[]` is `Ok(0)`. One `json_each` statement per chunk
            /// of at most `sqlrepo::limits::MAX_CHUNK_ROWS` rows and `MAX_CHUNK_BYTES` of
            /// JSON, several chunks in one unit (a transaction, or a savepoint in a `Tx`).
            ///
            /// # Errors
            /// `InvalidInput` for a row `validate` refuses (naming its position) or more than
            /// `MAX_BATCH_ROWS` rows; what the schema refuses for any row. Nothing is written
            /// either way.
            pub fn insert_many(
                &self,
                rows: &[#new],
            ) -> impl ::std::future::Future<Output = ::sqlrepo::Result<u64>> + Send + use<> {
                let handle = self.handle.clone();
                let chunks = ::sqlrepo::kit::json_chunks(#noun, rows, #validate, |r: &#new| {
                    (#(&r.#d,)*)
                });
                ::sqlrepo::kit::traced(#name, "insert_many", async move {
                    let chunks = chunks?;
                    if chunks.is_empty() {
                        return ::sqlrepo::Result::Ok(0);
                    }
                    let mut conn = handle.writer().await?;
                    ::sqlrepo::kit::write_chunks(&mut conn, &chunks, |sqlite, rows| {
                        ::std::boxed::Box::pin(async move {
                            let done = ::sqlx::query!(#insert_batch, rows).execute(sqlite).await?;
                            ::sqlrepo::Result::Ok(done.rows_affected())
                        })
                    })
                    .await
                })
            }

            /// The row with this id, or `None`.
            ///
            /// # Errors
            /// `Schema` when the table does not exist.
            pub fn get(
                &self,
                id: i64,
            ) -> impl ::std::future::Future<
                Output = ::sqlrepo::Result<::std::option::Option<#row>>,
            > + Send + use<> {
                let handle = self.handle.clone();
                ::sqlrepo::kit::traced(#name, "get", async move {
                    #direct_get
                    let mut conn = handle.reader().await?;
                    let record = ::sqlx::query!(#select_one, id)
                        .fetch_optional(conn.statements()?)
                        .await?;
                    ::sqlrepo::Result::Ok(record.map(|record| #build_row))
                })
            }

            /// The rows with these ids, in id order, in one statement; unknown ids are skipped
            /// and repeated ids given once.
            ///
            /// # Errors
            /// `InvalidInput` for more than `MAX_BATCH_ROWS` ids.
            pub fn get_many(
                &self,
                ids: &[i64],
            ) -> impl ::std::future::Future<
                Output = ::sqlrepo::Result<::std::vec::Vec<#row>>,
            > + Send + use<> {
                let handle = self.handle.clone();
                let ids = ::sqlrepo::kit::check_batch("get_many", ids.len())
                    .and_then(|()| ::sqlrepo::kit::json_text(ids));
                ::sqlrepo::kit::traced(#name, "get_many", async move {
                    let ids = ids?;
                    let mut conn = handle.reader().await?;
                    let records = ::sqlx::query!(#select_many, ids)
                        .fetch_all(conn.statements()?)
                        .await?;
                    ::sqlrepo::Result::Ok(records.into_iter().map(|record| #build_row).collect())
                })
            }

            /// Applies a patch in one statement; `true` when the row exists and a value really
            /// changed (an empty patch, one that repeats the stored values, or an unknown id
            /// gives `false`).
            ///
            /// # Errors
            /// What the schema refuses (a duplicate, a `CHECK`), with nothing changed.
            pub fn update(
                &self,
                id: i64,
                patch: &#patch,
            ) -> impl ::std::future::Future<Output = ::sqlrepo::Result<bool>> + Send + use<> {
                let handle = self.handle.clone();
                let patch = ::std::clone::Clone::clone(patch);
                ::sqlrepo::kit::traced(#name, "update", async move {
                    if patch.is_empty() {
                        return ::sqlrepo::Result::Ok(false);
                    }
                    let mut conn = handle.writer().await?;
                    let done = ::sqlx::query!(
                        #update,
                        #(patch.#d.is_some(), #patch_values,)*
                        id
                    )
                    .execute(conn.statements()?)
                    .await?;
                    ::sqlrepo::Result::Ok(done.rows_affected() > 0)
                })
            }

            /// Deletes a row; `true` when it existed.
            ///
            /// # Errors
            /// `ForeignKey` when other rows still reference it.
            pub fn delete(
                &self,
                id: i64,
            ) -> impl ::std::future::Future<Output = ::sqlrepo::Result<bool>> + Send + use<> {
                let handle = self.handle.clone();
                ::sqlrepo::kit::traced(#name, "delete", async move {
                    let mut conn = handle.writer().await?;
                    let done = ::sqlx::query!(#delete, id).execute(conn.statements()?).await?;
                    ::sqlrepo::Result::Ok(done.rows_affected() > 0)
                })
            }

            /// How many rows there are.
            ///
            /// # Errors
            /// `Schema` when the table does not exist.
            pub fn count(
                &self,
            ) -> impl ::std::future::Future<Output = ::sqlrepo::Result<i64>> + Send + use<> {
                let handle = self.handle.clone();
                ::sqlrepo::kit::traced(#name, "count", async move {
                    let mut conn = handle.reader().await?;
                    let count = ::sqlx::query_scalar!(#count)
                        .fetch_one(conn.statements()?)
                        .await?;
                    ::sqlrepo::Result::Ok(count)
                })
            }

            /// One keyset page in id order: the rows with ids above `after` (`None`: from the
            /// first), at most `limit` of them and at most `sqlrepo::limits::MAX_PAGE_BYTES`
            /// beyond the first, with the cursor of the next page. One statement.
            ///
            /// # Errors
            /// `InvalidInput` for a `limit` of 0 or above `MAX_PAGE_ROWS`, before the database
            /// is touched.
            pub fn page(
                &self,
                after: ::std::option::Option<i64>,
                limit: u32,
            ) -> impl ::std::future::Future<
                Output = ::sqlrepo::Result<::sqlrepo::kit::Page<#row>>,
            > + Send + use<> {
                let handle = self.handle.clone();
                let limit = ::sqlrepo::kit::page_limit(limit);
                ::sqlrepo::kit::traced(#name, "page", async move {
                    Self::#page_fn(handle, after, limit?).await
                })
            }

            /// Every row in id order, read in keyset pages (of `sqlrepo::kit::STREAM_PAGE_ROWS`
            /// rows and `MAX_PAGE_BYTES` at most), one page held at a time and no connection
            /// between pages, so memory stays flat. The first error ends the stream.
            pub fn stream(
                &self,
            ) -> impl ::sqlrepo::kit::Stream<Item = ::sqlrepo::Result<#row>> + Send + use<> {
                ::sqlrepo::kit::keyset(self.handle.clone(), #name, |handle, after| {
                    Self::#page_fn(handle, after, i64::from(::sqlrepo::kit::STREAM_PAGE_ROWS))
                })
            }

            async fn #page_fn(
                handle: ::sqlrepo::Handle,
                after: ::std::option::Option<i64>,
                limit: i64,
            ) -> ::sqlrepo::Result<::sqlrepo::kit::Page<#row>> {
                let ::std::option::Option::Some(from) = ::sqlrepo::kit::page_from(after) else {
                    return ::sqlrepo::Result::Ok(::sqlrepo::kit::Page {
                        rows: ::std::vec::Vec::new(),
                        next: ::std::option::Option::None,
                    });
                };
                let mut conn = handle.reader().await?;
                let records = ::sqlx::query!(#select_page, from, limit).fetch(conn.statements()?);
                ::sqlrepo::kit::read_page(records, limit, |record| {
                    let (key, bytes) = (record.#id, record.row_bytes);
                    (#build_row, key, bytes)
                })
                .await
            }
        }
    }
}

/// The direct read of `get` (`Handle::read_direct`: on the caller's thread, the same text as
/// the checked `query!` after it, which answers whenever this gives up), for a row whose every
/// field is of a type `sqlrepo::kit::DirectColumn` decodes as sqlx would; nothing otherwise
/// (a row with a field of a service's own type is read by sqlx alone).
fn direct_get(t: &Table, select_one: &str) -> proc_macro2::TokenStream {
    if !t.columns.iter().all(table::Column::reads_directly) {
        return proc_macro2::TokenStream::new();
    }
    let row = &t.row;
    let fields = t.columns.iter().enumerate().map(|(index, column)| {
        let ident = &column.ident;
        quote!(#ident: ::sqlrepo::kit::direct_column(row, #index)?)
    });
    quote! {
        let direct = handle
            .read_direct(|conn| {
                ::sqlrepo::kit::direct_get(conn, #select_one, id, |row| {
                    ::std::option::Option::Some(#row { #(#fields),* })
                })
            })
            .await;
        if let ::std::option::Option::Some(found) = direct {
            return ::sqlrepo::Result::Ok(found);
        }
    }
}
