//! The running configuration and the policy built from it. The app owns one [`Shared`]
//! and swaps both on a reload; the front doors read the policy through it, the list
//! refresher and the admin listener the configuration. Readers never lock: each load is
//! one atomic pointer read, and a reader keeps the copy it loaded until it is done.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::policy::Policy;

pub struct Shared {
    config: ArcSwap<Config>,
    policy: Arc<ArcSwap<Policy>>,
}

impl Shared {
    pub fn new(config: Config, policy: Policy) -> Arc<Shared> {
        Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
        })
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The handle the DNS filter and the proxy read the policy through.
    pub fn policy(&self) -> &Arc<ArcSwap<Policy>> {
        &self.policy
    }

    /// Puts a new configuration in force. The policy is published separately (its
    /// builder decides when), after the configuration it was built from.
    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }
}
