//! The layers' futures, named so that a request through the common path
//! allocates none of them: the inner future, its error boxed
//! ([`MapErr`]); bounded by a deadline ([`TimeoutFuture`]); or one of two
//! futures ([`Either`]), the other usually a boxed slow path.

use crate::BoxError;
use crate::error::{Deadline, Elapsed};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pin_project_lite::pin_project! {
    /// An inner future whose error is turned into a [`BoxError`].
    #[derive(Debug)]
    pub struct MapErr<F> {
        #[pin]
        inner: F,
    }
}

impl<F> MapErr<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F, T, E> Future for MapErr<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}

pin_project_lite::pin_project! {
    /// An inner future that fails with [`Elapsed`] at a deadline.
    #[derive(Debug)]
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        deadline: Deadline,
        timeout: Duration,
    }
}

impl<F: Future> TimeoutFuture<F> {
    /// `inner`, failing at `at`; `timeout` and `deadline` say which
    /// deadline that is, for the error.
    pub fn new(inner: F, at: tokio::time::Instant, deadline: Deadline, timeout: Duration) -> Self {
        Self {
            inner: tokio::time::timeout_at(at, inner),
            deadline,
            timeout,
        }
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(r)) => Poll::Ready(r.map_err(Into::into)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Elapsed {
                deadline: *this.deadline,
                timeout: *this.timeout,
            }
            .into())),
        }
    }
}

pin_project_lite::pin_project! {
    /// One of two futures with the same output.
    #[derive(Debug)]
    pub struct Either<A, B> {
        #[pin]
        inner: EitherInner<A, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = EitherProj]
    #[derive(Debug)]
    enum EitherInner<A, B> {
        Left { #[pin] inner: A },
        Right { #[pin] inner: B },
    }
}

impl<A, B> Either<A, B> {
    /// The first kind.
    pub fn left(inner: A) -> Self {
        Self {
            inner: EitherInner::Left { inner },
        }
    }

    /// The second kind.
    pub fn right(inner: B) -> Self {
        Self {
            inner: EitherInner::Right { inner },
        }
    }
}

impl<A, B> Future for Either<A, B>
where
    A: Future,
    B: Future<Output = A::Output>,
{
    type Output = A::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        match self.project().inner.project() {
            EitherProj::Left { inner } => inner.poll(cx),
            EitherProj::Right { inner } => inner.poll(cx),
        }
    }
}
