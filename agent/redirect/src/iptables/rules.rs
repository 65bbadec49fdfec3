//! The iptables rules of a redirected pod, worked out as data before anything touches the kernel.
//!
//! One nat chain per pod netns, jumped to from `OUTPUT` for TCP:
//! ```text
//! -A OUTPUT -p tcp -m comment --comment "traffic-manager:<key>:jump" -j TRAFFIC_OUTPUT
//! -A TRAFFIC_OUTPUT -d 127.0.0.0/8 ... :loopback -j RETURN            (first: it must be able to match)
//! -A TRAFFIC_OUTPUT -m owner --uid-owner 1337 ... :proxy-uid -j RETURN (the proxy's own upstreams)
//! -A TRAFFIC_OUTPUT -m owner --gid-owner 1337 ... :proxy-gid -j RETURN
//! -A TRAFFIC_OUTPUT -p tcp -m tcp --dport <p> ... :direct-<p> -j RETURN
//! -A TRAFFIC_OUTPUT -p tcp ... :redirect -j REDIRECT --to-ports 15001
//! ```
//! Rules are rendered exactly as `iptables-save` prints them, so the observed chain can be compared
//! with the desired one line by line, and the `iptables-restore --noflush` payload that moves one to
//! the other is a pure function of both (unit-tested against saved fixtures).
use crate::{PodKey, Settings};

/// The pod's nat chain (one per pod netns).
pub const CHAIN: &str = "TRAFFIC_OUTPUT";
/// Every rule we own carries a comment starting with this.
pub const COMMENT_PREFIX: &str = "traffic-manager:";

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

fn comment(key: &PodKey, what: &str) -> String {
    format!("-m comment --comment \"{COMMENT_PREFIX}{key}:{what}\"")
}

/// The jump from `OUTPUT` into the pod chain, as `iptables-save` prints it.
pub fn jump_rule(key: &PodKey) -> String {
    format!("-A OUTPUT -p tcp {} -j {CHAIN}", comment(key, "jump"))
}

/// The pod chain's rules, in order, as `iptables-save` prints them.
pub fn chain_rules(key: &PodKey, settings: &Settings, family: Family) -> Vec<String> {
    let mut rules = vec![
        format!(
            "-A {CHAIN} -d {} {} -j RETURN",
            family.loopback(),
            comment(key, "loopback")
        ),
        format!(
            "-A {CHAIN} -m owner --uid-owner {} {} -j RETURN",
            settings.proxy_uid,
            comment(key, "proxy-uid")
        ),
        format!(
            "-A {CHAIN} -m owner --gid-owner {} {} -j RETURN",
            settings.proxy_gid,
            comment(key, "proxy-gid")
        ),
    ];
    for port in &settings.direct_ports {
        rules.push(format!(
            "-A {CHAIN} -p tcp -m tcp --dport {port} {} -j RETURN",
            comment(key, &format!("direct-{port}"))
        ));
    }
    rules.push(format!(
        "-A {CHAIN} -p tcp {} -j REDIRECT --to-ports {}",
        comment(key, "redirect"),
        settings.proxy_port
    ));
    rules
}

/// What `iptables-save -t nat` shows of ours in one netns and family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether the pod chain exists.
    pub chain_exists: bool,
    /// Its rules (`-A TRAFFIC_OUTPUT ...` lines), in order.
    pub chain_rules: Vec<String>,
    /// `OUTPUT` rules that jump to the pod chain.
    pub jumps: Vec<String>,
}

impl Observed {
    /// Parses the `*nat` table of an `iptables-save` dump (other tables and chains are ignored).
    pub fn parse(save: &str) -> Self {
        let mut obs = Observed::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat || line.starts_with('#') {
                continue;
            } else if line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) == Some(CHAIN) {
                obs.chain_exists = true;
            } else if line.starts_with(&format!("-A {CHAIN} ")) {
                obs.chain_rules.push(line.to_string());
            } else if line.starts_with("-A OUTPUT ") && line.ends_with(&format!("-j {CHAIN}")) {
                obs.jumps.push(line.to_string());
            }
        }
        obs
    }

    /// The pod keys named in our comments (normally zero or one).
    pub fn owners(&self) -> Vec<String> {
        let mut owners: Vec<String> = self
            .chain_rules
            .iter()
            .chain(&self.jumps)
            .filter_map(|rule| {
                let start = rule.find(COMMENT_PREFIX)? + COMMENT_PREFIX.len();
                let rest = &rule[start..];
                Some(rest[..rest.find(':')?].to_string())
            })
            .collect();
        owners.sort();
        owners.dedup();
        owners
    }

    /// Reads settings back from a chain we wrote (for `list` after a restart and for checks).
    /// `None` when the chain is missing or not in our shape.
    pub fn settings(&self) -> Option<Settings> {
        let mut settings = Settings {
            direct_ports: Default::default(),
            ..Settings::default()
        };
        let mut saw_redirect = false;
        for rule in &self.chain_rules {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let after = |flag: &str| {
                words
                    .iter()
                    .position(|w| *w == flag)
                    .and_then(|i| words.get(i + 1))
            };
            if let Some(uid) = after("--uid-owner") {
                settings.proxy_uid = uid.parse().ok()?;
            } else if let Some(gid) = after("--gid-owner") {
                settings.proxy_gid = gid.parse().ok()?;
            } else if let Some(port) = after("--dport") {
                settings.direct_ports.insert(port.parse().ok()?);
            } else if let Some(port) = after("--to-ports") {
                settings.proxy_port = port.parse().ok()?;
                saw_redirect = true;
            }
        }
        saw_redirect.then_some(settings)
    }
}

/// The desired state of one netns and family: the pod chain with these rules, or nothing.
pub enum Desired {
    Present { key: PodKey, rules: Vec<String> },
    Absent,
}

/// The `iptables-restore --noflush` payload that turns `observed` into `desired` in one atomic
/// commit, or `None` when they already agree (so a repeated `enable` does not touch the kernel).
/// Only our chain and our jumps are touched; every other rule of the table is kept.
pub fn restore_payload(observed: &Observed, desired: &Desired) -> Option<String> {
    let mut out = String::from("*nat\n");
    match desired {
        Desired::Present { key, rules } => {
            let jump = jump_rule(key);
            let in_sync =
                observed.chain_exists && observed.chain_rules == *rules && observed.jumps == [jump.clone()];
            if in_sync {
                return None;
            }
            // Declaring a chain with --noflush creates it, or flushes it if it exists.
            out.push_str(&format!(":{CHAIN} - [0:0]\n"));
            for rule in rules {
                out.push_str(rule);
                out.push('\n');
            }
            let mut kept_jump = false;
            for existing in &observed.jumps {
                if *existing == jump && !kept_jump {
                    kept_jump = true;
                } else {
                    out.push_str(&format!("-D{}\n", &existing[2..]));
                }
            }
            if !kept_jump {
                out.push_str(&jump);
                out.push('\n');
            }
        }
        Desired::Absent => {
            if !observed.chain_exists && observed.jumps.is_empty() {
                return None;
            }
            for existing in &observed.jumps {
                out.push_str(&format!("-D{}\n", &existing[2..]));
            }
            if observed.chain_exists {
                out.push_str(&format!(":{CHAIN} - [0:0]\n-X {CHAIN}\n"));
            }
        }
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on bad fixtures")]
mod tests {
    use super::*;

    fn pod_a() -> (PodKey, Settings) {
        let settings = Settings {
            direct_ports: [9443].into_iter().collect(),
            ..Settings::default()
        };
        (PodKey::new("pod-a").unwrap(), settings)
    }

    #[test]
    fn the_loopback_return_comes_before_the_catch_all_redirect() {
        let (key, settings) = pod_a();
        for family in Family::ALL {
            let rules = chain_rules(&key, &settings, family);
            assert!(rules[0].contains(":loopback\""), "{rules:?}");
            assert!(
                rules.last().unwrap().contains("-j REDIRECT --to-ports 15001"),
                "{rules:?}"
            );
            assert!(
                rules
                    .iter()
                    .all(|r| r.contains("--comment \"traffic-manager:pod-a:")),
                "{rules:?}"
            );
        }
    }

    #[test]
    fn rendered_rules_are_exactly_what_iptables_save_prints_for_both_flavours_and_families() {
        let (key, settings) = pod_a();
        let fixtures = [
            (include_str!("testdata/nft-v4-enabled.save"), Family::V4),
            (include_str!("testdata/nft-v6-enabled.save"), Family::V6),
            (include_str!("testdata/legacy-v4-enabled.save"), Family::V4),
            (include_str!("testdata/legacy-v6-enabled.save"), Family::V6),
        ];
        for (save, family) in fixtures {
            let observed = Observed::parse(save);
            assert!(observed.chain_exists);
            assert_eq!(observed.chain_rules, chain_rules(&key, &settings, family));
            assert_eq!(observed.jumps, vec![jump_rule(&key)]);
            assert_eq!(observed.owners(), vec!["pod-a".to_string()]);
            assert_eq!(observed.settings(), Some(settings.clone()));
            let desired = Desired::Present {
                key: key.clone(),
                rules: chain_rules(&key, &settings, family),
            };
            assert_eq!(
                restore_payload(&observed, &desired),
                None,
                "in sync: nothing to do"
            );
        }
    }

    #[test]
    fn enabling_a_clean_netns_creates_the_chain_and_one_jump() {
        let (key, settings) = pod_a();
        let observed = Observed::parse(include_str!("testdata/nft-v4-empty.save"));
        assert_eq!(observed, Observed::default());
        let desired = Desired::Present {
            key: key.clone(),
            rules: chain_rules(&key, &settings, Family::V4),
        };
        let payload = restore_payload(&observed, &desired).unwrap();
        let expected = "*nat\n:TRAFFIC_OUTPUT - [0:0]\n\
            -A TRAFFIC_OUTPUT -d 127.0.0.0/8 -m comment --comment \"traffic-manager:pod-a:loopback\" -j RETURN\n\
            -A TRAFFIC_OUTPUT -m owner --uid-owner 1337 -m comment --comment \"traffic-manager:pod-a:proxy-uid\" -j RETURN\n\
            -A TRAFFIC_OUTPUT -m owner --gid-owner 1337 -m comment --comment \"traffic-manager:pod-a:proxy-gid\" -j RETURN\n\
            -A TRAFFIC_OUTPUT -p tcp -m tcp --dport 9443 -m comment --comment \"traffic-manager:pod-a:direct-9443\" -j RETURN\n\
            -A TRAFFIC_OUTPUT -p tcp -m comment --comment \"traffic-manager:pod-a:redirect\" -j REDIRECT --to-ports 15001\n\
            -A OUTPUT -p tcp -m comment --comment \"traffic-manager:pod-a:jump\" -j TRAFFIC_OUTPUT\n\
            COMMIT\n";
        assert_eq!(payload, expected);
    }

    #[test]
    fn changing_settings_rebuilds_the_chain_and_keeps_the_single_jump() {
        let (key, mut settings) = pod_a();
        let observed = Observed::parse(include_str!("testdata/legacy-v4-enabled.save"));
        settings.direct_ports = [5432, 6379].into_iter().collect();
        let desired = Desired::Present {
            key: key.clone(),
            rules: chain_rules(&key, &settings, Family::V4),
        };
        let payload = restore_payload(&observed, &desired).unwrap();
        assert!(payload.contains("--dport 5432") && payload.contains("--dport 6379"));
        assert!(!payload.contains("--dport 9443"));
        assert!(
            !payload.contains("-A OUTPUT"),
            "the jump is already there: {payload}"
        );
        assert!(!payload.contains("-D OUTPUT"), "{payload}");
    }

    #[test]
    fn duplicate_jumps_are_removed_down_to_one() {
        let (key, settings) = pod_a();
        let mut observed = Observed::parse(include_str!("testdata/nft-v4-enabled.save"));
        observed.jumps.push(jump_rule(&key));
        let desired = Desired::Present {
            key: key.clone(),
            rules: chain_rules(&key, &settings, Family::V4),
        };
        let payload = restore_payload(&observed, &desired).unwrap();
        assert_eq!(payload.matches("-D OUTPUT -p tcp").count(), 1, "{payload}");
        assert!(!payload.contains("-A OUTPUT"), "{payload}");
    }

    #[test]
    fn removal_deletes_the_jump_and_the_chain_and_nothing_else() {
        let observed = Observed::parse(include_str!("testdata/nft-v6-enabled.save"));
        let payload = restore_payload(&observed, &Desired::Absent).unwrap();
        assert_eq!(
            payload,
            "*nat\n-D OUTPUT -p tcp -m comment --comment \"traffic-manager:pod-a:jump\" -j TRAFFIC_OUTPUT\n\
             :TRAFFIC_OUTPUT - [0:0]\n-X TRAFFIC_OUTPUT\nCOMMIT\n"
        );
        assert!(!payload.contains("OTHER_CHAIN"));
        assert_eq!(
            restore_payload(&Observed::default(), &Desired::Absent),
            None,
            "idempotent"
        );
    }

    #[test]
    fn a_chain_without_a_redirect_is_not_read_back_as_settings() {
        let observed = Observed {
            chain_exists: true,
            ..Observed::default()
        };
        assert_eq!(observed.settings(), None);
    }
}
