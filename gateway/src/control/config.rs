//! `[control]`: who may write to devices through the control socket.
//! Owned by the control socket; `crate::config` composes it.
//!
//! The socket is mode 0660: root and the service's group may connect and
//! read status (`biota-gateway devices`). Writing a point moves a machine,
//! so it takes more: the process on the other end must run as root, as
//! the service's own user, or in `write_group`. The kernel says who that
//! is (`SO_PEERCRED`); the groups are read from `/proc/<pid>/status`.

use biota_common::config::{ConfigError, Problems, Validate};
use serde::Deserialize;

/// `[control]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// A group (name, from /etc/group) whose members may write to devices
    /// through the control socket, besides root and the service's user.
    /// Default: none.
    #[serde(default)]
    pub write_group: Option<String>,
}

impl Validate for ControlConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(group) = &self.write_group
            && (group.is_empty() || group.contains([':', '\n']))
        {
            Problems::new(path, errors)
                .add("write_group", format!("`{group}` is not a group name"));
        }
    }
}

impl ControlConfig {
    /// The write group's id, from `/etc/group`.
    pub fn write_gid(&self) -> Result<Option<u32>, String> {
        let Some(group) = &self.write_group else {
            return Ok(None);
        };
        let table = std::fs::read_to_string("/etc/group")
            .map_err(|e| format!("cannot read /etc/group to find group `{group}`: {e}"))?;
        table
            .lines()
            .find_map(|line| {
                let mut fields = line.split(':');
                (fields.next() == Some(group.as_str()))
                    .then(|| fields.nth(1).and_then(|gid| gid.parse().ok()))
                    .flatten()
            })
            .map(Some)
            .ok_or_else(|| format!("group `{group}` is not in /etc/group"))
    }
}

/// Who is on the other end of a connection, as far as writing goes.
#[derive(Debug, Clone, Copy)]
pub struct WriteRights {
    /// The service's own user.
    pub own_uid: u32,
    pub write_gid: Option<u32>,
}

impl WriteRights {
    pub fn new(write_gid: Option<u32>) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            // /proc/self belongs to the process's effective user.
            own_uid: std::fs::metadata("/proc/self").map_or(0, |m| m.uid()),
            write_gid,
        }
    }

    /// Whether the peer (uid, gid, pid) may write.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let Some(group) = self.write_gid else {
            return false;
        };
        gid == group || pid.is_some_and(|pid| supplementary_groups(pid).contains(&group))
    }
}

/// The supplementary groups of process `pid` (empty if it is gone).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_service_user_write_others_only_through_the_group() {
        let rights = WriteRights {
            own_uid: 990,
            write_gid: Some(1234),
        };
        assert!(rights.allows(0, 0, None));
        assert!(rights.allows(990, 990, None));
        assert!(!rights.allows(1000, 1000, None));
        assert!(rights.allows(1000, 1234, None));
        let no_group = WriteRights {
            own_uid: 990,
            write_gid: None,
        };
        assert!(!no_group.allows(1000, 1234, None));
        // This test process's own supplementary groups are read from /proc.
        let mine = supplementary_groups(std::process::id() as i32);
        if let Some(&group) = mine.first() {
            let rights = WriteRights {
                own_uid: u32::MAX,
                write_gid: Some(group),
            };
            assert!(rights.allows(u32::MAX - 1, u32::MAX - 1, Some(std::process::id() as i32)));
        }
    }
}
