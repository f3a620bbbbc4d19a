//! What `#[derive(Table)]` reads from the row struct: the table, the generated types' names,
//! and each field's column and role.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, Path, PathArguments, Type};

/// A field's part in the table's statements.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `INTEGER PRIMARY KEY` (rowid): assigned by SQLite, the key of `get`, pages and
    /// streams.
    Id,
    /// Written as "now" in the canonical timestamp form by `create` and `insert_many`; not in
    /// the new-row type nor in the patch.
    CreatedAt,
    /// An ordinary column: in the new-row type and the patch.
    Data,
}

/// One field, and so one column of the same name.
pub struct Column {
    pub ident: Ident,
    pub ty: Type,
    /// `T` when the field is `Option<T>` (the column is nullable).
    pub inner: Option<Type>,
    pub role: Role,
    /// Decoded into the field's own type (sqlx's `"col: Type"` override) instead of the type
    /// sqlx infers from the column; for a type SQLite has no column type of (a timestamp in a
    /// `TEXT` column, `bool` in a `STRICT` table).
    pub as_field_type: bool,
}

impl Column {
    /// Whether a direct read decodes this field (`sqlrepo::kit::DirectColumn`): a plain
    /// `i64`, `i32`, `bool`, `f64`, `String`, `Vec<u8>` or `OffsetDateTime`, or an `Option` of
    /// one. These are the types whose sqlx decoding `DirectColumn` follows, whether sqlx
    /// infers them from the column or `as_field_type` names them; any other type (a service's
    /// own `sqlx::Type`) is decoded by sqlx alone.
    pub fn reads_directly(&self) -> bool {
        let Type::Path(path) = self.inner.as_ref().unwrap_or(&self.ty) else {
            return false;
        };
        let Some(last) = path.path.segments.last() else {
            return false;
        };
        let name = last.ident.to_string();
        match &last.arguments {
            PathArguments::None => matches!(
                name.as_str(),
                "i64" | "i32" | "bool" | "f64" | "String" | "OffsetDateTime"
            ),
            PathArguments::AngleBracketed(args) => {
                name == "Vec"
                    && args.args.len() == 1
                    && matches!(&args.args[0], GenericArgument::Type(Type::Path(inner)) if inner.path.is_ident("u8"))
            }
            PathArguments::Parenthesized(_) => false,
        }
    }
}

/// The whole derive input.
pub struct Table {
    pub row: Ident,
    pub vis: syn::Visibility,
    pub name: String,
    pub repo: Ident,
    pub new: Ident,
    pub patch: Ident,
    pub noun: String,
    pub validate: Option<Path>,
    /// Further derives of the new-row type (`#[table(new_derive(serde::Deserialize))]`).
    pub new_derive: Vec<Path>,
    pub columns: Vec<Column>,
}

impl Table {
    pub fn parse(input: &DeriveInput) -> syn::Result<Table> {
        let row = input.ident.clone();
        if !input.generics.params.is_empty() {
            return Err(syn::Error::new_spanned(
                &input.generics,
                "#[derive(Table)] takes a struct without generic parameters",
            ));
        }
        let mut name = None;
        let mut repo = None;
        let mut new = None;
        let mut patch = None;
        let mut noun = None;
        let mut validate = None;
        let mut new_derive = Vec::new();
        for attr in input.attrs.iter().filter(|a| a.path().is_ident("table")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    name = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("repo") {
                    repo = Some(meta.value()?.parse::<Ident>()?);
                } else if meta.path.is_ident("new") {
                    new = Some(meta.value()?.parse::<Ident>()?);
                } else if meta.path.is_ident("patch") {
                    patch = Some(meta.value()?.parse::<Ident>()?);
                } else if meta.path.is_ident("noun") {
                    noun = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("validate") {
                    validate = Some(meta.value()?.parse::<Path>()?);
                } else if meta.path.is_ident("new_derive") {
                    meta.parse_nested_meta(|derive| {
                        new_derive.push(derive.path.clone());
                        Ok(())
                    })?;
                } else {
                    return Err(meta.error(
                        "expected `name`, `repo`, `new`, `patch`, `noun`, `validate` or `new_derive`",
                    ));
                }
                Ok(())
            })?;
        }
        let name = name.ok_or_else(|| {
            syn::Error::new_spanned(
                &input.ident,
                "#[derive(Table)] needs the table's name: #[table(name = \"notes\")]",
            )
        })?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(syn::Error::new_spanned(
                &input.ident,
                "the table's name is a plain SQL identifier (letters, digits, `_`)",
            ));
        }
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(fields) => &fields.named,
                _ => {
                    return Err(syn::Error::new_spanned(
                        &input.ident,
                        "#[derive(Table)] takes a struct with named fields, one per column",
                    ));
                }
            },
            _ => {
                return Err(syn::Error::new_spanned(
                    &input.ident,
                    "#[derive(Table)] takes a struct, one field per column",
                ));
            }
        };
        let mut columns = Vec::new();
        for field in fields {
            let ident = field.ident.clone().expect("named fields");
            let mut role = None;
            let mut as_field_type = false;
            for attr in field.attrs.iter().filter(|a| a.path().is_ident("table")) {
                attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("id") {
                        role = Some(Role::Id);
                    } else if meta.path.is_ident("created_at") {
                        role = Some(Role::CreatedAt);
                        as_field_type = true;
                    } else if meta.path.is_ident("as_field_type") {
                        as_field_type = true;
                    } else {
                        return Err(meta.error("expected `id`, `created_at` or `as_field_type`"));
                    }
                    Ok(())
                })?;
            }
            let role = role.unwrap_or(if ident == "id" { Role::Id } else { Role::Data });
            columns.push(Column {
                inner: option_inner(&field.ty),
                ty: field.ty.clone(),
                ident,
                role,
                as_field_type,
            });
        }
        let ids = columns.iter().filter(|c| c.role == Role::Id).count();
        if ids != 1 {
            return Err(syn::Error::new_spanned(
                &input.ident,
                "#[derive(Table)] needs exactly one id field (`id: i64`, or one marked #[table(id)])",
            ));
        }
        if !columns.iter().any(|c| c.role == Role::Data) {
            return Err(syn::Error::new_spanned(
                &input.ident,
                "#[derive(Table)] needs at least one column besides the id and timestamps",
            ));
        }
        let suffixed = |suffix: &str, prefix: &str| {
            Ident::new(&format!("{prefix}{row}{suffix}"), Span::call_site())
        };
        Ok(Table {
            repo: repo.unwrap_or_else(|| suffixed("Repo", "")),
            new: new.unwrap_or_else(|| suffixed("", "New")),
            patch: patch.unwrap_or_else(|| suffixed("Patch", "")),
            noun: noun.unwrap_or_else(|| snake(&row.to_string())),
            vis: input.vis.clone(),
            row,
            name,
            validate,
            new_derive,
            columns,
        })
    }

    pub fn id(&self) -> &Column {
        self.columns
            .iter()
            .find(|c| c.role == Role::Id)
            .expect("checked in parse")
    }

    pub fn data(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.role == Role::Data)
    }

    pub fn created(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.role == Role::CreatedAt)
    }
}

/// `T` of an `Option<T>` field (written `Option<T>`, `std::option::Option<T>`, …).
fn option_inner(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(inner) if args.args.len() == 1 => Some(inner.clone()),
        _ => None,
    }
}

/// `ShipmentLine` → `shipment_line`: the noun an invalid batch row is named by.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
