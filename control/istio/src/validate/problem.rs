//! Problems found in an object: a stable code, a severity, the path of the offending field, a
//! message, and what was left out because of it.

use std::fmt;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Something was left out (a rule, subset, port, server or the whole object).
    Error,
    /// Everything was kept; a deprecated or unsupported field, or an unknown one, was mapped or
    /// ignored as the message says.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $severity:ident, $reason:literal;)+) => {
        /// A stable message code. The numbers never change meaning; new problems get new numbers.
        /// The table in the crate documentation lists them all.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[$doc])* $variant,)+
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// `TM1001`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)+ }
            }

            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity,)+ }
            }

            /// A CamelCase reason for status conditions and Events (`InvalidRegex`).
            pub fn reason(self) -> &'static str {
                match self { $(Code::$variant => $reason,)+ }
            }
        }
    };
}

codes! {
    /// The object does not read (a field of the wrong type); nothing of it is used.
    Unreadable = "TM0001", Error, "Unreadable";
    /// A field this version does not know; ignored.
    UnknownField = "TM0002", Warning, "UnknownField";
    /// `metadata.name` is empty; the object is not used.
    MissingName = "TM0003", Error, "MissingName";
    /// A required list or field is empty (`hosts`, `host`); the object is not used.
    MissingRequired = "TM0004", Error, "MissingRequired";

    /// A `regex` that RE2 does not accept (look-around, back-references, bad syntax).
    InvalidRegex = "TM1001", Error, "InvalidRegex";
    /// Route weights sum to 0 (with more than one destination), or a weight is negative.
    InvalidWeight = "TM1002", Error, "InvalidWeight";
    /// A duration that does not parse or is negative.
    InvalidDuration = "TM1003", Error, "InvalidDuration";
    /// A duration of 0 where Envoy needs one > 0.
    ZeroDuration = "TM1004", Error, "ZeroDuration";
    /// A percentage outside 0-100.
    InvalidPercentage = "TM1005", Error, "InvalidPercentage";
    /// An HTTP status outside its range (fault abort / direct response 200-599, redirect 300-399).
    InvalidStatus = "TM1006", Error, "InvalidStatus";
    /// A header name that is not an HTTP token.
    InvalidHeaderName = "TM1007", Error, "InvalidHeaderName";
    /// A string match with none or several of `exact`, `prefix`, `regex`.
    InvalidStringMatch = "TM1008", Error, "InvalidStringMatch";
    /// A rule with no action, or with several of `route`, `redirect`, `directResponse`.
    InvalidAction = "TM1009", Error, "InvalidAction";
    /// A destination without `host`.
    MissingDestinationHost = "TM1010", Error, "MissingDestinationHost";
    /// A port number outside 1-65535.
    InvalidPort = "TM1011", Error, "InvalidPort";
    /// A `retries.retryOn` entry Envoy does not know, or negative `attempts`.
    InvalidRetry = "TM1012", Error, "InvalidRetry";
    /// A value outside the field's known values (enums, protocols, `derivePort`, ...).
    UnknownValue = "TM1013", Error, "UnsupportedValue";
    /// A negative count or size.
    InvalidCount = "TM1014", Error, "InvalidCount";
    /// A deprecated or removed field, mapped onto its replacement as the message says.
    Deprecated = "TM1015", Warning, "Deprecated";
    /// A field parsed but not acted on (not translated).
    Unsupported = "TM1016", Warning, "Unsupported";
    /// A fault with neither `delay` nor `abort`, or an abort without `httpStatus`.
    InvalidFault = "TM1017", Error, "InvalidFault";

    /// A subset without name, or a name used twice.
    InvalidSubset = "TM2001", Error, "InvalidSubset";
    /// `loadBalancer` with both or neither of `simple` and `consistentHash`, or a consistent hash
    /// with none or several keys.
    InvalidLoadBalancer = "TM2002", Error, "InvalidLoadBalancer";

    /// `STATIC` resolution with an endpoint address that is not an IP or without endpoints, `DNS`
    /// with a wildcard host or a CIDR address, `DNS_ROUND_ROBIN` with several endpoints,
    /// endpoints with `NONE`.
    InvalidResolution = "TM3001", Error, "InvalidResolution";
    /// A port number used twice in one ServiceEntry or Gateway server list.
    DuplicatePort = "TM3002", Error, "DuplicatePort";
    /// A ServiceEntry host that is `*`, has a namespace prefix or is not a DNS name.
    InvalidHost = "TM3003", Error, "InvalidHost";

    /// A Gateway server whose TLS settings cannot be served (HTTPS without `tls`, a mode that needs
    /// `credentialName` without it, file-path certificates).
    InvalidServerTls = "TM4001", Error, "InvalidServerTls";
    /// A Gateway server without hosts.
    MissingServerHosts = "TM4002", Error, "MissingServerHosts";
    /// A Gateway with an empty selector: it applies to every gateway proxy.
    EmptySelector = "TM4003", Warning, "EmptySelector";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a problem cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Nothing (warnings).
    Nothing,
    /// This part was left out (`spec.http[2]`, `spec.subsets[1]`, `spec.servers[0]`, ...).
    Part(String),
    /// The whole object was left out.
    Object,
}

/// One problem of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: Code,
    /// The offending field, `spec.http[0].match[1].headers.end-user.regex`.
    pub path: String,
    pub message: String,
    pub dropped: Dropped,
}

impl Problem {
    pub fn severity(&self) -> Severity {
        self.code.severity()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.code,
            self.severity(),
            self.path,
            self.message
        )?;
        match &self.dropped {
            Dropped::Nothing => Ok(()),
            Dropped::Part(p) => write!(f, " ({p} ignored)"),
            Dropped::Object => write!(f, " (object ignored)"),
        }
    }
}

/// Collects the problems of one part (rule, subset, ...) of an object.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub problems: Vec<Problem>,
}

impl Sink {
    /// A problem that, if an error, drops the part being checked (the caller decides which).
    pub fn push(&mut self, code: Code, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            code,
            path: path.into(),
            message: message.into(),
            dropped: Dropped::Nothing,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity() == Severity::Error)
    }

    /// Marks every error so far as having dropped `part`, and moves all problems into `out`.
    pub fn finish(self, part: Option<&str>, out: &mut Vec<Problem>) {
        for mut p in self.problems {
            if p.severity() == Severity::Error {
                p.dropped = match part {
                    Some(part) => Dropped::Part(part.to_string()),
                    None => Dropped::Object,
                };
            }
            out.push(p);
        }
    }
}
