//! Subscriptions on demand: a host's first call asks the control plane
//! for its listener and waits (bounded) for the answer.

use super::Command;
use crate::config::Name;
use crate::mesh::DemandWait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What the client knows of a host the application called.
#[derive(Debug)]
enum Host {
    /// Asked for, not answered: callers wait on the sender's channel, made
    /// when the first of them comes (a client subscribed to 10,000
    /// services up front would otherwise hold 10,000 channels, about
    /// 3.4 MB, until its first config).
    Pending(Option<watch::Sender<bool>>),
    /// Answered (served, or the control plane has no such listener, or the
    /// wait bound passed).
    Answered,
}

/// On-demand subscriptions: the route layer's side.
#[derive(Debug)]
pub(crate) struct OnDemand {
    commands: mpsc::UnboundedSender<Command>,
    hosts: Arc<Mutex<HashMap<Name, Host>>>,
    bound: Duration,
    full_said: std::sync::atomic::AtomicBool,
}

/// The most hosts asked for on demand (each is a subscription the control
/// plane keeps for this client).
pub(super) const MAX_ON_DEMAND_HOSTS: usize = 10_000;

fn lock(hosts: &Mutex<HashMap<Name, Host>>) -> std::sync::MutexGuard<'_, HashMap<Name, Host>> {
    hosts.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OnDemand {
    pub(crate) fn new(commands: mpsc::UnboundedSender<Command>, bound: Duration) -> Self {
        Self {
            commands,
            hosts: Arc::new(Mutex::new(HashMap::new())),
            bound,
            full_said: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<Name, Host>> {
        lock(&self.hosts)
    }

    /// Marks `host` pending without asking (it is subscribed already).
    pub(super) fn expect(&self, host: &str) {
        self.hosts()
            .entry(Name::new(host))
            .or_insert(Host::Pending(None));
    }

    /// Forgets `host`, so that a later call subscribes again.
    pub(super) fn forget(&self, host: &str) {
        if let Some(Host::Pending(Some(tx))) = self.hosts().remove(host) {
            tx.send_replace(true);
        }
    }

    /// Ends the waits for the hosts `answered` accepts.
    pub(crate) fn settle(&self, answered: impl Fn(&str) -> bool) {
        let mut hosts = self.hosts();
        for (name, h) in hosts.iter_mut() {
            if let Host::Pending(waiting) = h
                && answered(name)
            {
                if let Some(tx) = waiting {
                    tx.send_replace(true);
                }
                *h = Host::Answered;
            }
        }
    }
}

impl OnDemand {
    /// A bounded wait for `authority`'s listener, or `None` (see
    /// [`ConfigSource::demand`](crate::mesh::ConfigSource::demand)).
    pub(crate) fn want(&self, authority: &str) -> Option<DemandWait> {
        // An address is nobody's service name: nothing to ask for.
        let host = crate::route::host_of(authority);
        if authority.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        let mut rx = {
            let mut hosts = self.hosts();
            let held = hosts.len();
            match hosts.get_mut(authority) {
                Some(Host::Answered) => return None,
                Some(Host::Pending(waiting)) => waiting
                    .get_or_insert_with(|| watch::channel(false).0)
                    .subscribe(),
                None if held >= MAX_ON_DEMAND_HOSTS => {
                    // Hosts come from callers (a Host header can be anything):
                    // past the bound they pass through unasked, said once.
                    if !self
                        .full_said
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "xDS: {MAX_ON_DEMAND_HOSTS} hosts asked for on demand; others pass through without asking"
                        );
                    }
                    return None;
                }
                None => {
                    let (tx, rx) = watch::channel(false);
                    hosts.insert(Name::new(authority), Host::Pending(Some(tx)));
                    if self
                        .commands
                        .send(Command::Subscribe(authority.to_owned()))
                        .is_err()
                    {
                        // The client is gone: nothing will answer.
                        hosts.insert(Name::new(authority), Host::Answered);
                        return None;
                    }
                    rx
                }
            }
        };
        let (bound, hosts, host) = (self.bound, self.hosts.clone(), authority.to_owned());
        Some(Box::pin(async move {
            // Past the bound the request goes on as if the control plane
            // had no config for the host, and so do later ones; the
            // subscription stays, so a late answer is routed.
            if tokio::time::timeout(bound, rx.wait_for(|done| *done))
                .await
                .is_err()
                && let Some(h) = lock(&hosts).get_mut(host.as_str())
            {
                tracing::debug!(%host, "xDS: no answer for the host within {bound:?}");
                *h = Host::Answered;
            }
        }))
    }
}
