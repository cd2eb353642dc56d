//! Client groups: a client's source address decides which lists and allow rules apply.

use std::net::IpAddr;

use ipnet::IpNet;

/// A bit set of groups (at most [`MAX_GROUPS`]).
pub type GroupMask = u16;
/// Every group.
pub const ALL_GROUPS: GroupMask = GroupMask::MAX;
/// Group ids must fit the mask.
pub const MAX_GROUPS: usize = GroupMask::BITS as usize;

/// Index of a group; 0 is `default`, the group of clients no CIDR names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(pub u8);

impl GroupId {
    pub const DEFAULT: GroupId = GroupId(0);

    pub fn mask(self) -> GroupMask {
        1 << self.0
    }
}

/// Named groups and the client networks that belong to them.
#[derive(Debug, Clone)]
pub struct Groups {
    names: Vec<String>,
    /// Sorted most specific first, so the longest prefix wins.
    nets: Vec<(IpNet, GroupId)>,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            names: vec!["default".to_owned()],
            nets: Vec::new(),
        }
    }
}

impl Groups {
    /// Adds a group (or returns the existing one); `None` past [`MAX_GROUPS`].
    pub fn add(&mut self, name: &str) -> Option<GroupId> {
        if let Some(id) = self.id(name) {
            return Some(id);
        }
        if self.names.len() >= MAX_GROUPS {
            return None;
        }
        self.names.push(name.to_owned());
        Some(GroupId((self.names.len() - 1) as u8))
    }

    pub fn add_net(&mut self, net: IpNet, group: GroupId) {
        self.nets.push((net.trunc(), group));
        self.nets
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
    }

    pub fn id(&self, name: &str) -> Option<GroupId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| GroupId(i as u8))
    }

    pub fn name(&self, id: GroupId) -> &str {
        self.names
            .get(usize::from(id.0))
            .map_or("default", String::as_str)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The group of a client address: the most specific network that contains it.
    pub fn of(&self, client: IpAddr) -> GroupId {
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        self.nets
            .iter()
            .find(|(net, _)| net.contains(&client))
            .map_or(GroupId::DEFAULT, |&(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_unknown_clients_are_default() {
        let mut g = Groups::default();
        let agent = g.add("agent").unwrap();
        let litellm = g.add("litellm").unwrap();
        g.add_net("172.30.0.0/24".parse().unwrap(), agent);
        g.add_net("172.30.0.10/32".parse().unwrap(), litellm);
        assert_eq!(g.of("172.30.0.9".parse().unwrap()), agent);
        assert_eq!(g.of("172.30.0.10".parse().unwrap()), litellm);
        assert_eq!(g.of("::ffff:172.30.0.10".parse().unwrap()), litellm);
        assert_eq!(g.of("192.0.2.1".parse().unwrap()), GroupId::DEFAULT);
        assert_eq!(g.name(litellm), "litellm");
        assert_eq!(g.add("agent"), Some(agent));
    }

    #[test]
    fn group_count_is_bounded() {
        let mut g = Groups::default();
        for i in 1..MAX_GROUPS {
            assert!(g.add(&format!("g{i}")).is_some());
        }
        assert!(g.add("one-too-many").is_none());
    }
}
