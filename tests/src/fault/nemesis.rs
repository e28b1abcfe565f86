//! The nemesis of a fault-suite run: from its own seeded random stream it picks one fault
//! after another, holds it for a while and heals it: kill -9 and restart a central voter
//! (the leader included), a regional tier or an edge (which may come back on a skewed
//! clock); cut a voter off from the others, a region off from the central store, or an
//! edge off from its region (links drop every connection); stop a process (SIGSTOP) and
//! let it go on. Every fault is recorded with its scope: the edges it can keep from an
//! answer fresh from the central store.

use super::history::{Fault, Recorder, Scope};
use kv_deploy::launch::{LocalCluster, NodeProc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// What the nemesis may do.
#[derive(Debug, Clone, Copy)]
enum Kind {
    KillCentral { leader: bool },
    IsolateCentral,
    PauseCentral,
    KillRegional,
    PauseRegional,
    CutRegion,
    CutEdge,
    KillEdge { skew_ms: Option<i64> },
    PauseEdge,
}

/// One fault being held.
enum Held {
    Central(usize, Kind),
    Regional(usize, Kind),
    Edge(usize, Kind),
}

/// The nemesis, owning the cluster while the run lasts.
pub struct Nemesis {
    pub cluster: LocalCluster,
    rng: StdRng,
    /// Region of each edge, in edge order.
    edge_region: Vec<usize>,
}

fn edge_mut(cluster: &mut LocalCluster, e: usize) -> &mut NodeProc {
    let mut i = 0;
    for r in &mut cluster.regions {
        for edge in &mut r.edges {
            if i == e {
                return &mut edge.node;
            }
            i += 1;
        }
    }
    panic!("no edge {e}")
}

impl Nemesis {
    pub fn new(cluster: LocalCluster, seed: u64) -> Nemesis {
        let edge_region =
            cluster.regions.iter().enumerate().flat_map(|(r, region)| region.edges.iter().map(move |_| r)).collect();
        Nemesis { cluster, rng: StdRng::seed_from_u64(seed), edge_region }
    }

    fn pick(&mut self) -> Kind {
        match self.rng.gen_range(0..100) {
            0..=14 => Kind::KillCentral { leader: self.rng.gen_bool(0.5) },
            15..=24 => Kind::IsolateCentral,
            25..=31 => Kind::PauseCentral,
            32..=43 => Kind::KillRegional,
            44..=51 => Kind::PauseRegional,
            52..=63 => Kind::CutRegion,
            64..=75 => Kind::CutEdge,
            76..=89 => {
                let skew = self.rng.gen_bool(0.5).then(|| self.rng.gen_range(-20_000..=20_000));
                Kind::KillEdge { skew_ms: skew }
            }
            _ => Kind::PauseEdge,
        }
    }

    /// Causes faults one after another until `until`, each held 1 to 4 s, with 0.5 to 2 s
    /// of calm in between.
    pub async fn run(&mut self, rec: &Recorder, until: Instant) {
        loop {
            let calm = Duration::from_millis(self.rng.gen_range(500..2000));
            tokio::time::sleep_until((Instant::now() + calm).into()).await;
            if Instant::now() >= until {
                return;
            }
            let kind = self.pick();
            let hold = Duration::from_millis(self.rng.gen_range(1000..4000));
            let start = rec.now();
            let (held, what, scope) = self.cause(kind).await;
            tokio::time::sleep_until((Instant::now() + hold).into()).await;
            self.heal(held);
            rec.fault(Fault { what, scope, start, end: rec.now() });
        }
    }

    async fn cause(&mut self, kind: Kind) -> (Held, String, Scope) {
        let voters = self.cluster.central.len();
        let regions = self.cluster.regions.len();
        let edges = self.edge_region.len();
        match kind {
            Kind::KillCentral { leader } => {
                let i = match (leader, self.cluster.central_leader().await) {
                    (true, Some(l)) => l,
                    _ => self.rng.gen_range(0..voters),
                };
                self.cluster.central[i].kill();
                (
                    Held::Central(i, kind),
                    format!("kill -9 central-{}{}", i + 1, if leader { " (leader)" } else { "" }),
                    Scope::All,
                )
            }
            Kind::IsolateCentral => {
                let i = self.rng.gen_range(0..voters);
                self.cluster.isolate_central(i);
                (Held::Central(i, kind), format!("cut central-{} off from the other voters", i + 1), Scope::All)
            }
            Kind::PauseCentral => {
                let i = self.rng.gen_range(0..voters);
                self.cluster.central[i].pause();
                (Held::Central(i, kind), format!("SIGSTOP central-{}", i + 1), Scope::All)
            }
            Kind::KillRegional | Kind::PauseRegional | Kind::CutRegion => {
                let r = self.rng.gen_range(0..regions);
                let region = &mut self.cluster.regions[r];
                let what = match kind {
                    Kind::KillRegional => {
                        region.regional.kill();
                        "kill -9"
                    }
                    Kind::PauseRegional => {
                        region.regional.pause();
                        "SIGSTOP"
                    }
                    _ => {
                        region.central_links.iter().for_each(kv_deploy::link::DelayLink::cut);
                        "cut from the central store:"
                    }
                };
                (Held::Regional(r, kind), format!("{what} regional-{}", region.name), Scope::Region(r))
            }
            Kind::CutEdge | Kind::KillEdge { .. } | Kind::PauseEdge => {
                let e = self.rng.gen_range(0..edges);
                let what = match kind {
                    Kind::CutEdge => {
                        self.edge_link(e).cut();
                        format!("cut edge {e} from its regional tier")
                    }
                    Kind::KillEdge { skew_ms } => {
                        edge_mut(&mut self.cluster, e).kill();
                        format!("kill -9 edge {e} (restarts with clock skew {skew_ms:?} ms)")
                    }
                    _ => {
                        edge_mut(&mut self.cluster, e).pause();
                        format!("SIGSTOP edge {e}")
                    }
                };
                (Held::Edge(e, kind), what, Scope::Edge(e))
            }
        }
    }

    fn edge_link(&self, e: usize) -> &kv_deploy::link::DelayLink {
        &self.cluster.edges().nth(e).expect("edge index").link
    }

    fn heal(&mut self, held: Held) {
        match held {
            Held::Central(i, Kind::IsolateCentral) => self.cluster.heal_central(i),
            Held::Central(i, Kind::PauseCentral) => self.cluster.central[i].resume(),
            Held::Central(i, _) => restart(&mut self.cluster.central[i]),
            Held::Regional(r, kind) => {
                let region = &mut self.cluster.regions[r];
                match kind {
                    Kind::PauseRegional => region.regional.resume(),
                    Kind::CutRegion => region.central_links.iter().for_each(kv_deploy::link::DelayLink::restore),
                    _ => restart(&mut region.regional),
                }
            }
            Held::Edge(e, kind) => match kind {
                Kind::CutEdge => self.edge_link(e).restore(),
                Kind::PauseEdge => edge_mut(&mut self.cluster, e).resume(),
                Kind::KillEdge { skew_ms } => {
                    let node = edge_mut(&mut self.cluster, e);
                    node.env =
                        skew_ms.map(|s| (kv_common::time::SKEW_VAR.to_string(), s.to_string())).into_iter().collect();
                    restart(node);
                }
                _ => {}
            },
        }
    }

    /// Undoes every fault that might still hold (for the end of a run).
    pub fn heal_all(&mut self) {
        for i in 0..self.cluster.central.len() {
            self.cluster.heal_central(i);
            self.cluster.central[i].resume();
            if !self.cluster.central[i].is_running() {
                restart(&mut self.cluster.central[i]);
            }
        }
        for region in &mut self.cluster.regions {
            region.central_links.iter().for_each(kv_deploy::link::DelayLink::restore);
            region.regional.resume();
            if !region.regional.is_running() {
                restart(&mut region.regional);
            }
            for edge in &mut region.edges {
                edge.link.restore();
                edge.node.resume();
                if !edge.node.is_running() {
                    restart(&mut edge.node);
                }
            }
        }
    }
}

fn restart(node: &mut NodeProc) {
    node.kill();
    if let Err(e) = node.start() {
        eprintln!("fault suite: could not restart {}: {e:#}", node.name);
    }
}
