//! Bodies: [`MeshBody`] for requests on their way to an endpoint (replayable
//! when buffered, so retries and mirrors can resend them), and
//! [`ResponseBody`] for responses, which are either the upstream's or one
//! the mesh answers itself (an injected abort, a refusal turned into a
//! response).

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body below the mesh's route layer.
#[derive(Debug, Default)]
pub struct MeshBody {
    kind: Kind,
}

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl MeshBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A body of these bytes; replayable.
    pub fn from_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self {
                kind: Kind::Full(Some(bytes)),
            }
        }
    }

    /// A streaming body; sent once, never replayed.
    pub fn streaming<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Stream(body.map_err(Into::into).boxed_unsync()),
        }
    }

    /// Turns any body into a `MeshBody`: an empty one costs nothing; one of
    /// known length up to `buffer_limit` bytes is read into memory so it
    /// can be replayed; anything else streams.
    pub async fn from_body<B>(body: B, buffer_limit: Option<u64>) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(Self::empty());
        }
        match (buffer_limit, body.size_hint().exact()) {
            (Some(limit), Some(len)) if len <= limit => {
                let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
                Ok(Self::from_bytes(bytes))
            }
            _ => Ok(Self::streaming(body)),
        }
    }

    /// A copy to send again, if the body is held in memory.
    pub fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Empty => Some(Self::empty()),
            Kind::Full(Some(b)) => Some(Self::from_bytes(b.clone())),
            Kind::Full(None) | Kind::Stream(_) => None,
        }
    }

    /// Whether the body is held in memory (and so can be replayed).
    pub fn is_replayable(&self) -> bool {
        self.replay().is_some()
    }
}

impl Body for MeshBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Full(Some(_)) => false,
            Kind::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Stream(b) => b.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body: the upstream's, or one the mesh made.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<B> {
        Upstream { #[pin] body: B },
        Local { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// The upstream's body.
    pub fn upstream(body: B) -> Self {
        Self {
            inner: Inner::Upstream { body },
        }
    }

    /// A body the mesh answers with.
    pub fn local(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            inner: Inner::Local {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether the mesh made this body rather than an upstream.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Inner::Local { .. })
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            InnerProj::Upstream { body } => body.poll_frame(cx),
            InnerProj::Local { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body } => body.is_end_stream(),
            Inner::Local { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body } => body.size_hint(),
            Inner::Local { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> ResponseBody<B> {
    /// The upstream body, if this is one.
    pub fn into_upstream(self) -> Option<B> {
        match self.inner {
            Inner::Upstream { body } => Some(body),
            Inner::Local { .. } => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn small_known_bodies_are_buffered_and_replayable() {
        let b = MeshBody::from_body(Full::new(Bytes::from_static(b"hello")), Some(64))
            .await
            .unwrap();
        let again = b.replay().unwrap();
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(again.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn large_or_unlimited_bodies_stream_once() {
        let big = MeshBody::from_body(Full::new(Bytes::from(vec![0u8; 100])), Some(64))
            .await
            .unwrap();
        assert!(!big.is_replayable());
        assert_eq!(big.collect().await.unwrap().to_bytes().len(), 100);
        let unlimited = MeshBody::from_body(Full::new(Bytes::from_static(b"x")), None)
            .await
            .unwrap();
        assert!(!unlimited.is_replayable());
        let empty = MeshBody::from_body(http_body_util::Empty::<Bytes>::new(), None)
            .await
            .unwrap();
        assert!(empty.is_replayable() && empty.is_end_stream());
    }
}
