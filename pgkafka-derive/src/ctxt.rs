//! Collects every error of one derive, so the user sees all of them at once, each spanned on
//! their own code.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Display;

#[derive(Debug, Default)]
pub(crate) struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    pub(crate) fn error_spanned_by(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.errors.push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    pub(crate) fn syn_error(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// All errors combined into one, or `None` if there were none.
    pub(crate) fn check(self) -> Option<syn::Error> {
        let mut errors = self.errors.into_iter();
        let mut combined = errors.next()?;
        for error in errors {
            combined.combine(error);
        }
        Some(combined)
    }
}

/// `compile_error!` invocations for `error`.
pub(crate) fn to_compile_errors(error: &syn::Error) -> TokenStream {
    error.to_compile_error()
}
