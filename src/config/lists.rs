//! The list format a `[[lists]]` entry names: configuration vocabulary, so it lives here
//! and [`crate::lists::parse`] (which reads each format) takes it from config.

/// A list's syntax. `Domains` covers plain names mixed freely with `*.name`,
/// `=name`, `/regex/` and bare addresses (see [`crate::lists::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Auto,
    Hosts,
    Domains,
    Adblock,
    Dnsmasq,
    Ips,
}

impl Format {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Hosts => "hosts",
            Format::Domains => "domains",
            Format::Adblock => "adblock",
            Format::Dnsmasq => "dnsmasq",
            Format::Ips => "ips",
        }
    }
}
