//! The consumer's stop signal: raised by the first fatal error (which it keeps for `start_*` to
//! return), by the end of the poll loop, or by the `start_*` future being dropped.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use super::ConsumerError;

/// Raised once; every partition task finishes what it has in hand when it is.
#[derive(Debug, Default)]
pub(crate) struct Halt {
    token: CancellationToken,
    first_error: Mutex<Option<ConsumerError>>,
}

impl Halt {
    /// Stops the consumer because of `error`; only the first error is kept.
    pub(crate) fn fail(&self, error: ConsumerError) {
        let mut first = self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(error);
        }
        drop(first);
        self.token.cancel();
    }

    /// Stops the consumer without an error.
    pub(crate) fn raise(&self) {
        self.token.cancel();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A token cancelled when the halt is raised (and cancellable on its own, for one partition).
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// The fatal error that stopped the consumer, if one did.
    pub(crate) fn take_error(&self) -> Option<ConsumerError> {
        self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}
