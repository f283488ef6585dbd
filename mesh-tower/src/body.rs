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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A request body below the mesh's route layer. It also carries the
/// route layer's decision for the request ([`Routed`](crate::ext::Routed)),
/// which the layers below read through [`ext::routed`](crate::ext::routed):
/// in the body rather than in the request's extensions, whose first entry
/// costs three allocations when a request has none.
#[derive(Debug, Default)]
pub struct MeshBody {
    kind: Kind,
    routed: Option<crate::ext::Routed>,
}

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
    /// Streams through while keeping a copy (up to a limit) for replays.
    Recorded {
        body: UnsyncBoxBody<Bytes, BoxError>,
        tape: Arc<Mutex<Tape>>,
    },
}

/// What a recorded body has sent so far.
#[derive(Debug)]
struct Tape {
    chunks: Vec<Bytes>,
    len: u64,
    limit: u64,
    complete: bool,
    overflow: bool,
}

/// Makes copies of a body for retries: of a body held in memory from the
/// start, or of a streamed body recorded as it went (replayable once it was
/// sent whole and within the limit).
#[derive(Debug, Clone)]
pub struct Replayer(Source);

#[derive(Debug, Clone)]
enum Source {
    Bytes(Bytes),
    Tape(Arc<Mutex<Tape>>),
}

impl Replayer {
    /// Whether [`replay`](Self::replay) would give a copy now.
    pub fn can_replay(&self) -> bool {
        match &self.0 {
            Source::Bytes(_) => true,
            Source::Tape(t) => {
                let t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                t.complete && !t.overflow
            }
        }
    }

    /// A copy of the body, if one can be made now.
    pub fn replay(&self) -> Option<MeshBody> {
        match &self.0 {
            Source::Bytes(b) => Some(MeshBody::from_bytes(b.clone())),
            Source::Tape(t) => {
                let t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if !t.complete || t.overflow {
                    return None;
                }
                let bytes = match t.chunks.as_slice() {
                    [] => Bytes::new(),
                    [one] => one.clone(),
                    many => Bytes::from(many.concat()),
                };
                Some(MeshBody::from_bytes(bytes))
            }
        }
    }
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
                routed: None,
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
            routed: None,
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
            (Some(_), Some(_)) | (None, _) => Ok(Self::streaming(body)),
            // Length unknown (chunked, gRPC): stream it through without
            // waiting, and keep a copy while it stays under the limit.
            (Some(limit), None) => Ok(Self::recorded(body, limit)),
        }
    }

    /// A streaming body recorded (up to `limit` bytes) for replays.
    pub fn recorded<B>(body: B, limit: u64) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Recorded {
                body: body.map_err(Into::into).boxed_unsync(),
                tape: Arc::new(Mutex::new(Tape {
                    chunks: Vec::new(),
                    len: 0,
                    limit,
                    complete: false,
                    overflow: false,
                })),
            },
            routed: None,
        }
    }

    /// What makes copies of this body for retries, if it can have any.
    pub fn replayer(&self) -> Option<Replayer> {
        match &self.kind {
            Kind::Empty => Some(Replayer(Source::Bytes(Bytes::new()))),
            Kind::Full(Some(b)) => Some(Replayer(Source::Bytes(b.clone()))),
            Kind::Recorded { tape, .. } => Some(Replayer(Source::Tape(tape.clone()))),
            Kind::Full(None) | Kind::Stream(_) => None,
        }
    }

    /// A copy to send again, if the body is held in memory.
    pub fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Empty => Some(Self::empty()),
            Kind::Full(Some(b)) => Some(Self::from_bytes(b.clone())),
            Kind::Full(None) | Kind::Stream(_) | Kind::Recorded { .. } => None,
        }
    }

    /// Whether the body is held in memory (and so can be replayed).
    pub fn is_replayable(&self) -> bool {
        self.replay().is_some()
    }

    /// The route decision this request carries, if a route layer made one.
    pub fn routed(&self) -> Option<&crate::ext::Routed> {
        self.routed.as_ref()
    }

    /// The route decision, to change (the deadline, the attempt, the trace).
    pub fn routed_mut(&mut self) -> Option<&mut crate::ext::Routed> {
        self.routed.as_mut()
    }

    /// Sets the route decision this request carries.
    pub fn set_routed(&mut self, routed: crate::ext::Routed) {
        self.routed = Some(routed);
    }

    /// This body carrying `routed`.
    #[must_use]
    pub fn with_routed(mut self, routed: crate::ext::Routed) -> Self {
        self.routed = Some(routed);
        self
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
            Kind::Recorded { body, tape } => {
                let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
                let mut t = tape
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match &frame {
                    None => t.complete = true,
                    Some(Ok(f)) => match f.data_ref() {
                        Some(d) if !t.overflow && t.len + d.len() as u64 <= t.limit => {
                            t.len += d.len() as u64;
                            t.chunks.push(d.clone());
                            // The sender may stop polling once the body says
                            // it is done.
                            if body.is_end_stream() {
                                t.complete = true;
                            }
                        }
                        // Too big, or trailers: this body is sent once.
                        _ => {
                            t.overflow = true;
                            t.chunks.clear();
                        }
                    },
                    Some(Err(_)) => t.overflow = true,
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Full(Some(_)) => false,
            Kind::Stream(b) | Kind::Recorded { body: b, .. } => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Stream(b) | Kind::Recorded { body: b, .. } => b.size_hint(),
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

/// An empty local body, whatever `B` is (tonic's interceptors and other
/// wrappers ask for `Default` to answer without calling the service).
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self {
            inner: Inner::Local { data: None },
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
    async fn bodies_of_unknown_length_are_recorded_while_they_stream() {
        let chunks = || {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
            tokio::spawn(async move {
                for c in [&b"ab"[..], b"cd", b"ef"] {
                    let _ = tx.send_data(Bytes::from_static(c)).await;
                }
            });
            body
        };
        let b = MeshBody::from_body(chunks(), Some(64)).await.unwrap();
        let replayer = b.replayer().unwrap();
        assert!(!replayer.can_replay(), "nothing sent yet");
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(replayer.can_replay());
        assert_eq!(
            replayer
                .replay()
                .unwrap()
                .collect()
                .await
                .unwrap()
                .to_bytes(),
            "abcdef"
        );

        let b = MeshBody::from_body(chunks(), Some(3)).await.unwrap();
        let replayer = b.replayer().unwrap();
        assert_eq!(
            b.collect().await.unwrap().to_bytes(),
            "abcdef",
            "over the limit it still streams"
        );
        assert!(replayer.replay().is_none(), "but cannot be replayed");
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
