//! `#[derive(Decode)]` for proxyless-core's config model: the decoding of
//! a type from the document tree is written from the type itself, so a new
//! field is one edit to the model (and its validation).
//!
//! Structs with named fields read a mapping whose keys are the field names
//! (unknown keys are reported with the closest known name, duplicates too):
//!
//! - an `Option<T>` field is optional;
//! - `#[decode(required)]`: missing is a problem (the type's default stands
//!   in, so decoding goes on);
//! - otherwise absent takes the struct's `Default` value for the field, or
//!   `#[decode(default = expr)]`;
//! - `#[decode(rename = "match")]`: the key differs from the field name;
//! - `#[decode(with = Wrapper)]`: read as `Wrapper` (a `Decode` type), then
//!   converted with `From` (e.g. one item or a list);
//! - on the struct, `#[decode(fallback)]`: a list element that fails keeps
//!   its slot as the type's default; `#[decode(shorthand = path::to::fn)]`:
//!   `fn(&Node) -> Option<Self>` tried first (a plain string for a whole
//!   mapping, say).
//!
//! Enums with unit variants read a keyword: the variant's name in
//! snake_case, or `#[decode(name = "...")]`, plus any `#[decode(alias =
//! "...")]`; anything else is a problem listing the names, with a
//! suggestion.
//!
//! The generated code names `crate::config::decode`, so the derive is for
//! proxyless-core's own types.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Expr, Fields, LitStr, Path, Type, parse_macro_input};

/// See the crate docs.
#[proc_macro_derive(Decode, attributes(decode))]
pub fn derive_decode(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let out = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(fields) => derive_struct(&input, fields),
            _ => Err(syn::Error::new_spanned(
                &input.ident,
                "Decode needs named fields",
            )),
        },
        Data::Enum(e) => derive_enum(&input, e),
        Data::Union(_) => Err(syn::Error::new_spanned(
            &input.ident,
            "Decode does not take unions",
        )),
    };
    out.unwrap_or_else(syn::Error::into_compile_error).into()
}

/// What `#[decode(...)]` says on one item.
#[derive(Default)]
struct Attrs {
    required: bool,
    fallback: bool,
    default: Option<Expr>,
    rename: Option<LitStr>,
    with: Option<Type>,
    shorthand: Option<Path>,
    name: Option<LitStr>,
    aliases: Vec<LitStr>,
}

fn attrs(list: &[syn::Attribute]) -> syn::Result<Attrs> {
    let mut a = Attrs::default();
    for attr in list.iter().filter(|a| a.path().is_ident("decode")) {
        attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match key.as_str() {
                "required" => a.required = true,
                "fallback" => a.fallback = true,
                "default" => a.default = Some(meta.value()?.parse()?),
                "rename" => a.rename = Some(meta.value()?.parse()?),
                "with" => a.with = Some(meta.value()?.parse()?),
                "shorthand" => a.shorthand = Some(meta.value()?.parse()?),
                "name" => a.name = Some(meta.value()?.parse()?),
                "alias" => a.aliases.push(meta.value()?.parse()?),
                _ => return Err(meta.error("unknown decode attribute")),
            }
            Ok(())
        })?;
    }
    Ok(a)
}

/// `T` when `ty` is `Option<T>`.
fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

fn derive_struct(input: &DeriveInput, fields: &syn::FieldsNamed) -> syn::Result<Tokens> {
    let ident = &input.ident;
    let top = attrs(&input.attrs)?;
    let d = quote!(crate::config::decode);
    let mut keys = Vec::new();
    let mut reads = Vec::new();
    let mut names = Vec::new();
    let mut uses_default = false;
    for field in &fields.named {
        let Some(name) = &field.ident else { continue };
        let a = attrs(&field.attrs)?;
        let key = a
            .rename
            .as_ref()
            .map_or_else(|| name.to_string(), LitStr::value);
        let var = format_ident!("__field_{}", name);
        let read = match (option_inner(&field.ty), &a.with) {
            (Some(inner), None) => quote!(f.opt::<#inner>(#key, cx)),
            (Some(_), Some(w)) => quote!(f.opt::<#w>(#key, cx).map(::core::convert::Into::into)),
            (None, with) => {
                let read_as = with.clone().unwrap_or_else(|| field.ty.clone());
                let convert = with
                    .as_ref()
                    .map(|_| quote!(.map(::core::convert::Into::into)));
                if a.required {
                    quote!(f.req_opt::<#read_as>(#key, cx)#convert.unwrap_or_default())
                } else {
                    let default = match &a.default {
                        Some(e) => quote!(#e),
                        None => {
                            uses_default = true;
                            quote!(__struct_default.#name)
                        }
                    };
                    quote!(f.opt::<#read_as>(#key, cx)#convert.unwrap_or_else(|| #default))
                }
            }
        };
        keys.push(key);
        reads.push(quote!(let #var = #read;));
        names.push(quote!(#name: #var));
    }
    let defaults = uses_default
        .then(|| quote!(let __struct_default = <#ident as ::core::default::Default>::default();));
    let fallback = top.fallback.then(|| {
        quote!(
            fn fallback() -> Option<Self> {
                Some(<Self as ::core::default::Default>::default())
            }
        )
    });
    let shorthand = top
        .shorthand
        .as_ref()
        .map(|p| quote!(if let Some(v) = #p(n) { return Some(v); }));
    Ok(quote! {
        impl #d::Decode for #ident {
            #fallback
            fn decode(n: &crate::config::node::Node, path: &str, cx: &mut #d::Cx) -> Option<Self> {
                #shorthand
                let f = #d::Fields::of(n, path, cx, &[#(#keys),*])?;
                #defaults
                #(#reads)*
                Some(Self { #(#names),* })
            }
        }
    })
}

/// `HttpOne` -> `http_one`.
fn snake(ident: &syn::Ident) -> String {
    let mut out = String::new();
    for (i, c) in ident.to_string().chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn derive_enum(input: &DeriveInput, e: &syn::DataEnum) -> syn::Result<Tokens> {
    let ident = &input.ident;
    let d = quote!(crate::config::decode);
    let mut pairs = Vec::new();
    let mut alias_pairs = Vec::new();
    for v in &e.variants {
        if !matches!(v.fields, Fields::Unit) {
            return Err(syn::Error::new_spanned(
                v,
                "Decode derives keyword enums only (unit variants)",
            ));
        }
        let a = attrs(&v.attrs)?;
        let vi = &v.ident;
        let name = a.name.as_ref().map_or_else(|| snake(vi), LitStr::value);
        pairs.push(quote!((#name, Self::#vi)));
        for alias in &a.aliases {
            let alias = alias.value();
            alias_pairs.push(quote!((#alias, Self::#vi)));
        }
    }
    // Names first, aliases after, in the problem's list of what is allowed.
    pairs.extend(alias_pairs);
    Ok(quote! {
        impl #d::Decode for #ident {
            fn decode(n: &crate::config::node::Node, path: &str, cx: &mut #d::Cx) -> Option<Self> {
                #d::keyword(n, path, cx, &[#(#pairs),*])
            }
        }
    })
}
