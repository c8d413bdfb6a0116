//! NRI's transport: one unix connection multiplexed into channels, ttrpc on each.
//!
//! Written after containerd/nri v0.8.0 (`pkg/net/multiplex/mux.go`, `ttrpc.go`) and
//! containerd/ttrpc v1.2.7 (`channel.go`, `request.proto`):
//!
//! - **mux frame**: 4-byte big-endian connection id, 4-byte big-endian payload length, payload.
//!   Connection 1 carries the plugin service (the runtime calls the plugin), 2 the runtime
//!   service (the plugin calls the runtime). A frame holds at most 10 + 4 MiB bytes (one ttrpc
//!   header plus ttrpc's largest message); a ttrpc message may still be split over several
//!   frames, so each channel is a byte stream. Frames for other ids are dropped, as NRI does.
//! - **ttrpc message**: 10-byte header (u32 length, u32 stream id, u8 type: 1 request,
//!   2 response, u8 flags), then at most 4 MiB of payload: a [`Request`] or [`Response`].
//!
//! Every length is checked before anything is allocated for it: a channel never buffers more
//! than one largest message plus one largest frame.

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The mux frame header: connection id and payload length.
pub const MUX_HEADER: usize = 8;
/// ttrpc's message header.
pub const TTRPC_HEADER: usize = 10;
/// ttrpc's largest message payload (`messageLengthMax`).
pub const TTRPC_MAX: usize = 4 << 20;
/// The largest mux frame payload NRI writes (`maxPayloadSize`).
pub const MUX_MAX: usize = TTRPC_HEADER + TTRPC_MAX;
/// The channel the runtime calls the plugin's service on.
pub const PLUGIN_CONN: u32 = 1;
/// The channel the plugin calls the runtime's service on.
pub const RUNTIME_CONN: u32 = 2;
/// ttrpc message type: a request.
pub const TYPE_REQUEST: u8 = 1;
/// ttrpc message type: a response.
pub const TYPE_RESPONSE: u8 = 2;

/// ttrpc's request envelope (`request.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// Fully qualified service, e.g. `nri.pkg.api.v1alpha1.Plugin`.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Method name.
    #[prost(string, tag = "2")]
    pub method: String,
    /// The request message.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// The caller's deadline.
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    /// Metadata.
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// ttrpc's metadata entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// ttrpc's response envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The call's status; absent or code 0 is success.
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    /// The response message.
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `google.rpc.Status` (ttrpc's `proto/status.proto`); details are not read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Message.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC's `Unimplemented`.
pub const CODE_UNIMPLEMENTED: i32 = 12;
/// gRPC's `InvalidArgument`.
pub const CODE_INVALID_ARGUMENT: i32 = 3;

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the socket failed (a truncated frame is `UnexpectedEof`).
    #[error("NRI connection: {0}")]
    Io(#[from] std::io::Error),
    /// The runtime closed the connection between frames.
    #[error("NRI connection closed by the runtime")]
    Closed,
    /// A mux frame longer than NRI ever writes.
    #[error("mux frame of {len} bytes on connection {conn} (at most {MUX_MAX})")]
    FrameTooLong {
        /// Connection id.
        conn: u32,
        /// Its length field.
        len: u32,
    },
    /// A ttrpc message longer than ttrpc allows.
    #[error("ttrpc message of {len} bytes on connection {conn} (at most {TTRPC_MAX})")]
    MessageTooLong {
        /// Connection id.
        conn: u32,
        /// Its length field.
        len: u32,
    },
    /// We were asked to send more than ttrpc allows.
    #[error("refusing to send a ttrpc message of {0} bytes")]
    SendTooLong(usize),
}

/// One ttrpc message off a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The mux connection id ([`PLUGIN_CONN`] or [`RUNTIME_CONN`]).
    pub conn: u32,
    /// ttrpc stream id.
    pub stream: u32,
    /// ttrpc message type.
    pub kind: u8,
    /// ttrpc flags.
    pub flags: u8,
    /// The envelope, undecoded.
    pub payload: Vec<u8>,
}

/// Reads mux frames and hands out whole ttrpc messages, per channel.
#[derive(Debug, Default)]
pub struct Demux {
    plugin: Vec<u8>,
    runtime: Vec<u8>,
    /// Frames dropped for an unknown connection id.
    pub dropped: u64,
}

impl Demux {
    /// The next whole ttrpc message: from what is buffered, else after reading frames.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Message, WireError> {
        loop {
            for conn in [PLUGIN_CONN, RUNTIME_CONN] {
                if let Some(m) = self.pop(conn)? {
                    return Ok(m);
                }
            }
            let mut hdr = [0u8; MUX_HEADER];
            // EOF before a frame starts: closed; inside one: truncated (UnexpectedEof).
            let first = r.read(&mut hdr[..1]).await?;
            if first == 0 {
                return Err(WireError::Closed);
            }
            r.read_exact(&mut hdr[1..]).await?;
            let conn = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            if len as usize > MUX_MAX {
                return Err(WireError::FrameTooLong { conn, len });
            }
            let buf = match conn {
                PLUGIN_CONN => &mut self.plugin,
                RUNTIME_CONN => &mut self.runtime,
                _ => {
                    // NRI drops frames for connections nobody opened; so do we.
                    self.dropped += 1;
                    let mut sink = (&mut *r).take(u64::from(len));
                    let n = tokio::io::copy(&mut sink, &mut tokio::io::sink()).await?;
                    if n != u64::from(len) {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    continue;
                }
            };
            let start = buf.len();
            buf.resize(start + len as usize, 0);
            r.read_exact(&mut buf[start..]).await?;
        }
    }

    fn pop(&mut self, conn: u32) -> Result<Option<Message>, WireError> {
        let buf = if conn == PLUGIN_CONN {
            &mut self.plugin
        } else {
            &mut self.runtime
        };
        if buf.len() < TTRPC_HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len as usize > TTRPC_MAX {
            return Err(WireError::MessageTooLong { conn, len });
        }
        if buf.len() < TTRPC_HEADER + len as usize {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let (kind, flags) = (buf[8], buf[9]);
        let payload = buf[TTRPC_HEADER..TTRPC_HEADER + len as usize].to_vec();
        buf.drain(..TTRPC_HEADER + len as usize);
        Ok(Some(Message {
            conn,
            stream,
            kind,
            flags,
            payload,
        }))
    }
}

/// A ttrpc message as mux frames, ready to write.
pub fn encode(conn: u32, stream: u32, kind: u8, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() > TTRPC_MAX {
        return Err(WireError::SendTooLong(payload.len()));
    }
    let mut msg = Vec::with_capacity(TTRPC_HEADER + payload.len());
    msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    msg.extend_from_slice(&stream.to_be_bytes());
    msg.extend_from_slice(&[kind, 0]);
    msg.extend_from_slice(payload);
    let mut out = Vec::with_capacity(msg.len() + MUX_HEADER);
    for chunk in msg.chunks(MUX_MAX) {
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

/// A request envelope as mux frames.
pub fn encode_request(
    conn: u32,
    stream: u32,
    service: &str,
    method: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, WireError> {
    let req = Request {
        service: service.to_string(),
        method: method.to_string(),
        payload,
        timeout_nano: 0,
        metadata: Vec::new(),
    };
    encode(conn, stream, TYPE_REQUEST, &req.encode_to_vec())
}

/// A response envelope as mux frames.
pub fn encode_response(conn: u32, stream: u32, resp: &Response) -> Result<Vec<u8>, WireError> {
    encode(conn, stream, TYPE_RESPONSE, &resp.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8]) -> (Vec<Message>, WireError) {
        let mut r = bytes;
        let mut d = Demux::default();
        let mut got = Vec::new();
        loop {
            match d.next(&mut r).await {
                Ok(m) => got.push(m),
                Err(e) => return (got, e),
            }
        }
    }

    #[tokio::test]
    async fn messages_round_trip_and_split_frames_are_reassembled() {
        let a = encode_request(PLUGIN_CONN, 3, "s", "m", vec![1, 2, 3]).unwrap();
        let b = encode_response(RUNTIME_CONN, 1, &Response::default()).unwrap();
        // The same message cut into three frames, as Go's bufio may write it.
        let whole = encode(PLUGIN_CONN, 5, TYPE_REQUEST, b"hello").unwrap();
        let body = &whole[MUX_HEADER..];
        let mut split = Vec::new();
        for part in [&body[..4], &body[4..12], &body[12..]] {
            split.extend_from_slice(&PLUGIN_CONN.to_be_bytes());
            split.extend_from_slice(&(part.len() as u32).to_be_bytes());
            split.extend_from_slice(part);
        }
        let (got, end) = read_all(&[a, b, split].concat()).await;
        assert!(matches!(end, WireError::Closed), "{end}");
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got[0].conn, got[0].stream, got[0].kind),
            (PLUGIN_CONN, 3, TYPE_REQUEST)
        );
        let req = Request::decode(&got[0].payload[..]).unwrap();
        assert_eq!(
            (req.service.as_str(), req.method.as_str(), &req.payload[..]),
            ("s", "m", &[1u8, 2, 3][..])
        );
        assert_eq!((got[1].conn, got[1].kind), (RUNTIME_CONN, TYPE_RESPONSE));
        assert_eq!((got[2].stream, &got[2].payload[..]), (5, &b"hello"[..]));
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_not_a_message() {
        let full = encode_request(PLUGIN_CONN, 1, "s", "m", vec![7; 40]).unwrap();
        for cut in [3, MUX_HEADER + 5, full.len() - 1] {
            let (got, end) = read_all(&full[..cut]).await;
            assert!(got.is_empty());
            assert!(
                matches!(&end, WireError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "cut {cut}: {end}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_lengths_are_refused_before_allocating() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&PLUGIN_CONN.to_be_bytes());
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        let (_, end) = read_all(&frame).await;
        assert!(
            matches!(end, WireError::FrameTooLong { conn: 1, len: u32::MAX }),
            "{end}"
        );

        // A frame within bounds announcing a ttrpc message over 4 MiB.
        let mut ttrpc = Vec::new();
        ttrpc.extend_from_slice(&((TTRPC_MAX + 1) as u32).to_be_bytes());
        ttrpc.extend_from_slice(&[0, 0, 0, 1, TYPE_REQUEST, 0]);
        let mut frame = Vec::new();
        frame.extend_from_slice(&PLUGIN_CONN.to_be_bytes());
        frame.extend_from_slice(&(ttrpc.len() as u32).to_be_bytes());
        frame.extend_from_slice(&ttrpc);
        let (_, end) = read_all(&frame).await;
        assert!(matches!(end, WireError::MessageTooLong { conn: 1, .. }), "{end}");

        assert!(matches!(
            encode(PLUGIN_CONN, 1, TYPE_RESPONSE, &vec![0; TTRPC_MAX + 1]),
            Err(WireError::SendTooLong(_))
        ));
    }

    #[tokio::test]
    async fn frames_for_unknown_connections_are_dropped() {
        let mut stray = Vec::new();
        stray.extend_from_slice(&7u32.to_be_bytes());
        stray.extend_from_slice(&4u32.to_be_bytes());
        stray.extend_from_slice(b"junk");
        let good = encode_request(PLUGIN_CONN, 1, "s", "m", vec![]).unwrap();
        let all = [stray.clone(), good].concat();
        let mut r = &all[..];
        let mut d = Demux::default();
        let m = d.next(&mut r).await.unwrap();
        assert_eq!((m.conn, m.stream), (PLUGIN_CONN, 1));
        assert_eq!(d.dropped, 1);
        // A stray frame cut short is still a truncated connection.
        let (_, end) = read_all(&stray[..10]).await;
        assert!(matches!(end, WireError::Io(_)), "{end}");
    }
}
