//! The tiny line protocols spoken by the test binaries, parsed in one place.
//!
//! - client -> backend (through the proxy or not): one request line, `hello <dst the client dialed>\n`.
//! - backend -> client: `dst=<addr the backend was dialed on> src=<peer the backend saw>\n`, then close.
//! - proxy stdout: one `orig=<original destination> peer=<client address> req=<dst named in the request>`
//!   line per accepted connection (or `error=<text> peer=<client address>`), so a test learns what the
//!   proxy learned. The request names the destination because the client's own address does not
//!   identify a connection: NAT may remap its port, and the same port may serve several destinations.
use std::net::{IpAddr, SocketAddr};

/// The backend's reply: where it was dialed and who dialed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendReply {
    pub dst: SocketAddr,
    pub src: SocketAddr,
}

impl BackendReply {
    pub fn render(&self) -> String {
        format!("dst={} src={}\n", self.dst, self.src)
    }
    pub fn parse(line: &str) -> Option<Self> {
        let mut dst = None;
        let mut src = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("dst=") {
                dst = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("src=") {
                src = v.parse().ok();
            }
        }
        Some(Self { dst: dst?, src: src? })
    }
}

/// One line of the proxy's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    /// The proxy learned `orig` for the connection from `peer`.
    Learned { orig: SocketAddr, peer: SocketAddr },
    /// The proxy could not learn or reach the original destination.
    Failed { error: String, peer: SocketAddr },
}

impl ProxyEvent {
    pub fn render(&self) -> String {
        match self {
            ProxyEvent::Learned { orig, peer } => format!("orig={orig} peer={peer}"),
            ProxyEvent::Failed { error, peer } => format!("error={} peer={peer}", error.replace(' ', "_")),
        }
    }
    pub fn parse(line: &str) -> Option<Self> {
        let mut orig = None;
        let mut error = None;
        let mut peer = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("orig=") {
                orig = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("error=") {
                error = Some(v.to_string());
            } else if let Some(v) = field.strip_prefix("peer=") {
                peer = v.parse().ok();
            }
        }
        match (orig, error) {
            (Some(orig), _) => Some(ProxyEvent::Learned { orig, peer: peer? }),
            (None, Some(error)) => Some(ProxyEvent::Failed { error, peer: peer? }),
            _ => None,
        }
    }
    pub fn peer(&self) -> SocketAddr {
        match self {
            ProxyEvent::Learned { peer, .. } | ProxyEvent::Failed { peer, .. } => *peer,
        }
    }
}

/// A proxy log line: the event plus the destination the client named in its request line (empty when
/// the proxy failed before reading it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyLine {
    pub event: ProxyEvent,
    pub req: String,
}

impl ProxyLine {
    pub fn render(&self) -> String {
        if self.req.is_empty() {
            self.event.render()
        } else {
            format!("{} req={}", self.event.render(), self.req)
        }
    }
    pub fn parse(line: &str) -> Option<Self> {
        let event = ProxyEvent::parse(line)?;
        let req = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("req="))
            .unwrap_or_default()
            .to_string();
        Some(Self { event, req })
    }
}

/// One line of the client's output per connection or datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientResult {
    pub dst: SocketAddr,
    pub local: SocketAddr,
    pub reply: BackendReply,
}

impl ClientResult {
    pub fn render(&self) -> String {
        format!(
            "ok dst={} local={} reply_{}",
            self.dst,
            self.local,
            self.reply.render().trim_end().replace(" src=", " reply_src=")
        )
    }
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("ok ")?;
        let (mut dst, mut local, mut rdst, mut rsrc) = (None, None, None, None);
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            let v: Option<SocketAddr> = v.parse().ok();
            match k {
                "dst" => dst = v,
                "local" => local = v,
                "reply_dst" => rdst = v,
                "reply_src" => rsrc = v,
                _ => {}
            }
        }
        Some(Self {
            dst: dst?,
            local: local?,
            reply: BackendReply {
                dst: rdst?,
                src: rsrc?,
            },
        })
    }
    /// The backend saw the client's own socket address: no proxy in between.
    pub fn went_direct(&self) -> bool {
        self.reply.src == unmap(self.local)
    }
}

/// `::ffff:a.b.c.d` -> `a.b.c.d` (dual-stack sockets report v4 peers as mapped v6 addresses).
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on bad fixtures")]
mod tests {
    use super::*;

    #[test]
    fn every_line_format_parses_back_what_it_rendered() {
        let reply = BackendReply {
            dst: "10.96.0.10:9080".parse().unwrap(),
            src: "[fd00::1]:4000".parse().unwrap(),
        };
        assert_eq!(BackendReply::parse(&reply.render()), Some(reply));
        let ev = ProxyEvent::Learned {
            orig: "10.96.0.10:9080".parse().unwrap(),
            peer: "10.250.0.1:5000".parse().unwrap(),
        };
        assert_eq!(ProxyEvent::parse(&ev.render()), Some(ev.clone()));
        let line = ProxyLine {
            event: ev,
            req: "10.96.0.10:9080".into(),
        };
        assert_eq!(ProxyLine::parse(&line.render()), Some(line));
        let ev = ProxyEvent::Failed {
            error: "no original dst".into(),
            peer: "10.250.0.1:5000".parse().unwrap(),
        };
        assert_eq!(
            ProxyEvent::parse(&ev.render()),
            Some(ProxyEvent::Failed {
                error: "no_original_dst".into(),
                peer: "10.250.0.1:5000".parse().unwrap()
            })
        );
        let res = ClientResult {
            dst: "10.96.0.10:9080".parse().unwrap(),
            local: "10.250.0.1:5000".parse().unwrap(),
            reply,
        };
        assert_eq!(ClientResult::parse(&res.render()), Some(res));
    }

    #[test]
    fn mapped_v4_addresses_are_unmapped() {
        assert_eq!(
            unmap("[::ffff:10.96.0.1]:80".parse().unwrap()),
            "10.96.0.1:80".parse().unwrap()
        );
        assert_eq!(
            unmap("[fd00::1]:80".parse().unwrap()),
            "[fd00::1]:80".parse().unwrap()
        );
    }
}
