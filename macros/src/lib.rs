//! `#[ktstr_test]`: a scheduler test, or a gauntlet of them, as ordinary
//! Rust tests that `cargo test` and `cargo nextest run` find.
//!
//! ```ignore
//! use ktstr::ktstr_test;
//! use ktstr::testing::Case;
//!
//! #[ktstr_test(topology = "1n2l2c1t", scheduler = "bpfland", duration = "4s")]
//! fn spinners_all_run(t: &mut Case) {
//!     t.cgroup("hot").spinners(2);
//!     let report = t.run();
//!     assert!(report.workers.iter().all(|w| w.iterations > 0));
//! }
//!
//! // One test per topology and flag profile: spinners::gauntlet_1n1l2c1t_default, ...
//! #[ktstr_test(topologies = ["1n1l2c1t", "1n2l2c2t"], scheduler = "bpfland",
//!              profiles = ["default", "local-pcpu"], scenario = "steady")]
//! fn steady() {}
//! ```
//!
//! The expansion only builds a `ktstr::testing::Declared` from the
//! attribute and hands it the function; everything that runs is in ktstr.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprArray, ExprLit, ItemFn, Lit, LitStr, MetaNameValue, Token};

/// Declare a scheduler test; see the crate documentation for the keys:
/// `topology` or `topologies`, `scheduler`, `args`, `profiles`,
/// `scenario`, `duration`, `dump_at`, `max_gap`, `fairness_spread`, `min_throughput`,
/// `kernel`, `backend`, `memory`.
#[proc_macro_attribute]
pub fn ktstr_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The attribute's values, checked.
#[derive(Default)]
struct Attr {
    topologies: Vec<LitStr>,
    profiles: Vec<LitStr>,
    args: Vec<LitStr>,
    /// Any `&'static str` expression (e.g. `env!("CARGO_BIN_EXE_x")`).
    scheduler: Option<Expr>,
    scenario: Option<LitStr>,
    duration: Option<LitStr>,
    dump_at: Option<LitStr>,
    max_gap: Option<LitStr>,
    kernel: Option<Expr>,
    backend: Option<LitStr>,
    fairness_spread: Option<f64>,
    min_throughput: Option<f64>,
    memory: Option<u64>,
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let a = parse_attr(pairs)?;
    let mut body: ItemFn = syn::parse2(item)?;
    let name = body.sig.ident.clone();
    let takes_case = match body.sig.inputs.len() {
        0 => false,
        1 => true,
        _ => {
            return Err(syn::Error::new_spanned(
                &body.sig.inputs,
                "a #[ktstr_test] function takes nothing, or one `&mut ktstr::testing::Case`",
            ));
        }
    };
    // What the test harness reads goes on the generated tests.
    let (test_attrs, own): (Vec<_>, Vec<_>) = body
        .attrs
        .drain(..)
        .partition(|a| a.path().is_ident("should_panic") || a.path().is_ident("ignore"));
    body.attrs = own;
    let inner = format_ident!("__ktstr_body");
    body.sig.ident = inner.clone();
    let call = if takes_case {
        quote!(#inner)
    } else {
        quote!(|_: &mut ::ktstr::testing::Case| #inner())
    };
    if a.topologies.len() <= 1 && a.profiles.len() <= 1 {
        let declared = declared(&a, Some(&name));
        let topology = topology_or_default(a.topologies.first());
        let profile = option(a.profiles.first());
        return Ok(quote! {
            #[test]
            #(#test_attrs)*
            fn #name() {
                #body
                #declared.variant(#topology, #profile, 0, 1).run(#call);
            }
        });
    }
    let topologies: Vec<LitStr> = if a.topologies.is_empty() {
        vec![LitStr::new("1n1l2c1t", Span::call_site())]
    } else {
        a.topologies.clone()
    };
    let profiles: Vec<Option<&LitStr>> = if a.profiles.is_empty() {
        vec![None]
    } else {
        a.profiles.iter().map(Some).collect()
    };
    let total = topologies.len() * profiles.len();
    let mut tests = Vec::new();
    for (ti, t) in topologies.iter().enumerate() {
        for (pi, p) in profiles.iter().enumerate() {
            let index = ti * profiles.len() + pi;
            let mut ident = format!("gauntlet_{}", t.value());
            if let Some(p) = p {
                ident.push('_');
                ident.push_str(&p.value());
            }
            let ident = syn::Ident::new(&sanitize(&ident), t.span());
            let profile = option(*p);
            tests.push(quote! {
                #[test]
                #(#test_attrs)*
                fn #ident() {
                    super::#name::DECLARED.variant(#t, #profile, #index, #total).run(#call);
                }
            });
        }
    }
    let declared = declared(&a, None);
    Ok(quote! {
        #[allow(non_snake_case)]
        mod #name {
            #[allow(unused_imports)]
            use super::*;
            pub(super) const DECLARED: ::ktstr::testing::Declared = #declared;
            #body
            #(#tests)*
        }
    })
}

fn parse_attr(pairs: Punctuated<MetaNameValue, Token![,]>) -> syn::Result<Attr> {
    let mut a = Attr::default();
    for nv in pairs {
        let key = nv
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let v = &nv.value;
        match key.as_str() {
            "topology" => a.topologies = vec![string(v)?],
            "topologies" => a.topologies = strings(v)?,
            "profiles" => a.profiles = strings(v)?,
            "profile" => a.profiles = vec![string(v)?],
            "args" => a.args = strings(v)?,
            "scheduler" => a.scheduler = Some(v.clone()),
            "scenario" => a.scenario = Some(string(v)?),
            "duration" => a.duration = Some(string(v)?),
            "dump_at" => a.dump_at = Some(string(v)?),
            "max_gap" => a.max_gap = Some(string(v)?),
            "kernel" => a.kernel = Some(v.clone()),
            "backend" => a.backend = Some(string(v)?),
            "fairness_spread" => a.fairness_spread = Some(number(v)?),
            "min_throughput" => a.min_throughput = Some(number(v)?),
            "memory" => a.memory = Some(number(v)? as u64),
            _ => {
                return Err(syn::Error::new_spanned(
                    &nv.path,
                    "unknown key; #[ktstr_test] takes topology, topologies, scheduler, args, profile, profiles, scenario, duration, dump_at, max_gap, fairness_spread, min_throughput, kernel, backend, memory",
                ));
            }
        }
    }
    if !a.profiles.is_empty() && a.scheduler.is_none() {
        return Err(syn::Error::new(
            Span::call_site(),
            "profiles are flag sets of a scheduler: name the scheduler too",
        ));
    }
    Ok(a)
}

/// `ktstr::testing::Declared { .. }` for the attribute's values.
/// `name` is `None` inside a gauntlet's module, whose path ends with it.
fn declared(a: &Attr, name: Option<&syn::Ident>) -> proc_macro2::TokenStream {
    let name = match name {
        Some(n) => {
            let n = n.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #n))
        }
        None => quote!(::core::module_path!()),
    };
    let args = &a.args;
    let scheduler = option_expr(a.scheduler.as_ref());
    let scenario = option(a.scenario.as_ref());
    let duration = option(a.duration.as_ref());
    let dump_at = option(a.dump_at.as_ref());
    let max_gap = option(a.max_gap.as_ref());
    let kernel = option_expr(a.kernel.as_ref());
    let backend = option(a.backend.as_ref());
    let spread = match a.fairness_spread {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    let min_throughput = match a.min_throughput {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    let memory = match a.memory {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    quote! {
        ::ktstr::testing::Declared {
            name: #name,
            scheduler: #scheduler,
            args: &[#(#args),*],
            scenario: #scenario,
            duration: #duration,
            dump_at: #dump_at,
            max_gap: #max_gap,
            fairness_spread_percent: #spread,
            min_throughput: #min_throughput,
            kernel: #kernel,
            backend: #backend,
            memory_mib: #memory,
        }
    }
}

fn topology_or_default(t: Option<&LitStr>) -> LitStr {
    t.cloned()
        .unwrap_or_else(|| LitStr::new("1n1l2c1t", Span::call_site()))
}

fn option(v: Option<&LitStr>) -> proc_macro2::TokenStream {
    match v {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    }
}

fn option_expr(v: Option<&Expr>) -> proc_macro2::TokenStream {
    match v {
        Some(e) => quote!(::core::option::Option::Some(#e)),
        None => quote!(::core::option::Option::None),
    }
}

/// A test name from a topology and a profile: `-` and `.` become `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn string(v: &Expr) -> syn::Result<LitStr> {
    match v {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        _ => Err(syn::Error::new_spanned(v, "expected a string literal")),
    }
}

fn strings(v: &Expr) -> syn::Result<Vec<LitStr>> {
    match v {
        Expr::Array(ExprArray { elems, .. }) => elems.iter().map(string).collect(),
        _ => Err(syn::Error::new_spanned(
            v,
            "expected an array of string literals, e.g. [\"--slice-us\", \"5000\"]",
        )),
    }
}

fn number(v: &Expr) -> syn::Result<f64> {
    match v {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse(),
        _ => Err(syn::Error::new_spanned(v, "expected a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(attr: &str, item: &str) -> Result<String, String> {
        expand(attr.parse().unwrap(), item.parse().unwrap())
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_test_carries_every_key() {
        let out = expand_str(
            r#"topology = "2n2l4c2t", scheduler = "bpfland", args = ["--slice-us", "5000"], duration = "10s", fairness_spread = 30, memory = 1024"#,
            "fn fair(t: &mut ktstr::testing::Case) { t.run(); }",
        )
        .unwrap();
        assert!(out.contains("fn fair ()"), "{out}");
        assert!(out.contains("\"2n2l4c2t\""), "{out}");
        assert!(out.contains("\"--slice-us\" , \"5000\""), "{out}");
        assert!(
            out.contains("Some (30f64)") || out.contains("Some (30"),
            "{out}"
        );
        assert!(
            out.contains("variant (\"2n2l4c2t\" , :: core :: option :: Option :: None , 0 , 1)"),
            "{out}"
        );
    }

    #[test]
    fn a_gauntlet_is_a_module_of_one_test_per_combination() {
        let out = expand_str(
            r#"topologies = ["1n1l2c1t", "1n2l2c2t"], scheduler = "bpfland", profiles = ["default", "local-pcpu"]"#,
            "fn steady() {}",
        )
        .unwrap();
        assert!(
            out.starts_with("# [allow (non_snake_case)] mod steady"),
            "{out}"
        );
        for t in [
            "gauntlet_1n1l2c1t_default",
            "gauntlet_1n1l2c1t_local_pcpu",
            "gauntlet_1n2l2c2t_default",
            "gauntlet_1n2l2c2t_local_pcpu",
        ] {
            assert!(out.contains(&format!("fn {t} ()")), "{t} missing: {out}");
        }
        assert!(out.contains("3usize , 4usize"), "{out}");
        let out = expand_str(
            r#"scheduler = env!("CARGO_BIN_EXE_x"), topologies = ["1n1l1c1t", "1n1l2c1t"]"#,
            "#[ignore] fn x() {}",
        )
        .unwrap();
        assert!(out.contains("Some (env ! (\"CARGO_BIN_EXE_x\"))"), "{out}");
        assert_eq!(out.matches("# [ignore]").count(), 2, "{out}");
    }

    #[test]
    fn mistakes_are_compile_errors_that_say_what_to_write() {
        let e = expand_str(r#"topolgy = "1n1l1c1t""#, "fn x() {}").unwrap_err();
        assert!(e.contains("unknown key"), "{e}");
        let e = expand_str(r#"args = "--x""#, "fn x() {}").unwrap_err();
        assert!(e.contains("array of string literals"), "{e}");
        let e = expand_str(r#"profiles = ["a"]"#, "fn x() {}").unwrap_err();
        assert!(e.contains("name the scheduler"), "{e}");
        let e = expand_str("", "fn x(a: u32, b: u32) {}").unwrap_err();
        assert!(e.contains("takes nothing"), "{e}");
    }
}
