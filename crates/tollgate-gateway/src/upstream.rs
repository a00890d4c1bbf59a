//! The model servers: one slot pool per upstream (its catalog `slots`), the upstreams that
//! failed lately skipped for a while, and one HTTP client with bounded connection pools.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tollgate_core::catalog::{EndpointDef, Upstream};

/// One upstream as this server uses it.
pub struct UpstreamState {
    pub def: Upstream,
    slots: Arc<Semaphore>,
    /// Skipped until then (it failed).
    failed_until: Mutex<Option<Instant>>,
}

impl UpstreamState {
    fn healthy(&self, now: Instant) -> bool {
        self.failed_until
            .lock()
            .expect("upstream health")
            .is_none_or(|t| t <= now)
    }
}

/// A slot taken on an upstream: released when dropped.
pub struct Slot {
    pub upstream: Arc<UpstreamState>,
    _permit: OwnedSemaphorePermit,
}

/// The upstreams of every endpoint, made as the catalog names them (an upstream whose URL
/// or slots changed is a new one; the old one's calls finish on their own slots).
pub struct Pools {
    cooldown: Duration,
    by_key: Mutex<HashMap<(String, String, u32), Arc<UpstreamState>>>,
    /// Where each endpoint's next call starts in its list, so calls spread over upstreams.
    next: Mutex<HashMap<String, usize>>,
    pub client: reqwest::Client,
}

impl Pools {
    pub fn new(cooldown: Duration) -> Pools {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client with rustls");
        Pools {
            cooldown,
            by_key: Mutex::default(),
            next: Mutex::default(),
            client,
        }
    }

    /// The endpoint's upstreams, in catalog order.
    pub fn of(&self, def: &EndpointDef) -> Vec<Arc<UpstreamState>> {
        let mut by_key = self.by_key.lock().expect("upstreams");
        def.upstreams
            .iter()
            .map(|u| {
                by_key
                    .entry((def.id.to_string(), u.url.clone(), u.slots))
                    .or_insert_with(|| {
                        Arc::new(UpstreamState {
                            def: u.clone(),
                            slots: Arc::new(Semaphore::new(u.slots as usize)),
                            failed_until: Mutex::new(None),
                        })
                    })
                    .clone()
            })
            .collect()
    }

    /// How many calls the endpoint's upstreams would take now.
    pub fn free(&self, def: &EndpointDef) -> usize {
        self.of(def)
            .iter()
            .map(|u| u.slots.available_permits())
            .sum()
    }

    /// A slot on one of the endpoint's upstreams: a healthy one with a free slot first (taking
    /// turns, and not `avoid`, the one that just failed, while another is there), then any with
    /// a free slot, else the first to free one. `None`: the endpoint has no upstream.
    pub async fn take(&self, def: &EndpointDef, avoid: Option<&str>) -> Option<Slot> {
        if let Some(slot) = self.try_take_avoiding(def, avoid) {
            return Some(slot);
        }
        let waits = self.of(def).into_iter().map(|u| {
            Box::pin(async move {
                let permit = u.slots.clone().acquire_owned().await.ok()?;
                Some(Slot {
                    upstream: u,
                    _permit: permit,
                })
            })
        });
        if waits.len() == 0 {
            return None;
        }
        futures_util::future::select_all(waits).await.0
    }

    /// A free slot on one of the endpoint's upstreams, if one is free now.
    pub fn try_take(&self, def: &EndpointDef) -> Option<Slot> {
        self.try_take_avoiding(def, None)
    }

    fn try_take_avoiding(&self, def: &EndpointDef, avoid: Option<&str>) -> Option<Slot> {
        let all = self.of(def);
        if all.is_empty() {
            return None;
        }
        let start = {
            let mut next = self.next.lock().expect("upstream turns");
            let n = next.entry(def.id.to_string()).or_insert(0);
            let start = *n % all.len();
            *n = n.wrapping_add(1);
            start
        };
        let now = Instant::now();
        let order: Vec<&Arc<UpstreamState>> =
            all.iter().cycle().skip(start).take(all.len()).collect();
        let preferred = order
            .iter()
            .filter(|u| u.healthy(now) && Some(u.def.url.as_str()) != avoid)
            .chain(order.iter().filter(|u| u.healthy(now)))
            .chain(order.iter());
        for u in preferred {
            if let Ok(permit) = u.slots.clone().try_acquire_owned() {
                return Some(Slot {
                    upstream: (*u).clone(),
                    _permit: permit,
                });
            }
        }
        None
    }

    /// Skips `upstream` for the cooldown.
    pub fn failed(&self, upstream: &UpstreamState) {
        *upstream.failed_until.lock().expect("upstream health") =
            Some(Instant::now() + self.cooldown);
    }

    /// Takes `upstream` back at once (it answered).
    pub fn answered(&self, upstream: &UpstreamState) {
        *upstream.failed_until.lock().expect("upstream health") = None;
    }
}
