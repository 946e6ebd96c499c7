//! The benchmark's results: printed, and written as bench/results/scale-<date>.{md,json}.
use std::path::{Path, PathBuf};

use anyhow::Result;
use rlhf_bench::machine;
use serde_json::{Value, json};

/// What the operator does per job besides creating the pods.
const OPERATOR_WORK: &str = "Per job the operator also lists the job's pods, validates the spec, \
server-side-applies a headless Service and a ConfigMap (the trainer config) before the pods, patches \
the job's status and records Events; every pod it creates comes back through its watch and triggers \
another reconcile. Jobs name an existing claim (spec.storage.claimName), so no PVCs are created. \
The direct loop creates the very same pods (built by the operator's build step, minus the owner \
reference) with one sequential POST each, and nothing else.";

pub struct Direct {
    pub seconds: f64,
}

pub struct Operator {
    /// First job create to the last job create returning.
    pub seconds_to_creates: f64,
    /// First job create to every pod existing (the figure).
    pub seconds_to_pods: f64,
    /// First job create to every job having a status phase.
    pub seconds_to_statuses: f64,
    /// VmHWM of the operator process once every status is written.
    pub peak_rss_mib: f64,
    pub services: usize,
    pub config_maps: usize,
    pub events: usize,
}

pub struct Report {
    date: String,
    kubernetes: String,
    jobs: u32,
    pods_per_job: u32,
    /// Every round, sorted by ratio.
    rounds: Vec<(Direct, Operator)>,
}

fn ratio((direct, operator): &(Direct, Operator)) -> f64 {
    operator.seconds_to_pods / direct.seconds
}

impl Report {
    pub fn new(
        kubernetes: String,
        jobs: u32,
        pods_per_job: u32,
        mut rounds: Vec<(Direct, Operator)>,
    ) -> Self {
        assert!(!rounds.is_empty(), "at least one round");
        rounds.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        let date = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%d")
            .to_string();
        Self {
            date,
            kubernetes,
            jobs,
            pods_per_job,
            rounds,
        }
    }

    /// The median round (the detailed figures come from it).
    fn median(&self) -> &(Direct, Operator) {
        &self.rounds[self.rounds.len() / 2]
    }

    pub fn ratio(&self) -> f64 {
        ratio(self.median())
    }

    fn round_ratios(&self) -> Vec<f64> {
        self.rounds.iter().map(ratio).collect()
    }

    fn pods(&self) -> f64 {
        (self.jobs * self.pods_per_job) as f64
    }

    /// Writes the markdown and JSON files into `dir`, returning their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let md = dir.join(format!("scale-{}.md", self.date));
        let json = md.with_extension("json");
        std::fs::write(&md, self.markdown())?;
        std::fs::write(&json, serde_json::to_string_pretty(&self.json())? + "\n")?;
        Ok((md, json))
    }

    fn json(&self) -> Value {
        let (d, o) = self.median();
        json!({
            "date": self.date,
            "machine": machine(),
            "kubernetes": self.kubernetes,
            "jobs": self.jobs,
            "podsPerJob": self.pods_per_job,
            "direct": {"seconds": d.seconds, "podsPerSecond": self.pods() / d.seconds},
            "operator": {
                "secondsToJobCreates": o.seconds_to_creates,
                "secondsToAllPods": o.seconds_to_pods,
                "secondsToAllStatuses": o.seconds_to_statuses,
                "podsPerSecond": self.pods() / o.seconds_to_pods,
                "peakRssMiB": o.peak_rss_mib,
                "services": o.services, "configMaps": o.config_maps, "jobEvents": o.events,
            },
            "ratioOperatorOverDirect": self.ratio(),
            "roundRatios": self.round_ratios(),
            "note": OPERATOR_WORK,
        })
    }

    fn markdown(&self) -> String {
        let ((d, o), m) = (self.median(), machine());
        let ratios: Vec<String> = self
            .round_ratios()
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect();
        let pods = self.pods();
        format!(
            "# Scale benchmark, {date}\n\n\
             `make bench`: {jobs} RLHFJobs x {ppj} pods = {pods} pods on a local Kubernetes {k8s} control plane \
             (etcd, kube-apiserver, kube-scheduler, kube-controller-manager; no nodes, so pods stay Pending).\n\n\
             Machine: {cpus} CPUs ({model}), {mem:.1} GiB memory. The control plane, the operator and the \
             benchmark share them.\n\n\
             | run | time to all {pods} pods | pods/s |\n|---|---|---|\n\
             | direct: sequential `POST` of each pod | {ds:.2} s | {dps:.1} |\n\
             | operator: {jobs} job creates, pods by the operator | {os:.2} s | {ops:.1} |\n\n\
             **Ratio operator/direct: {ratio:.2}** (median of {n} rounds: {ratios}; the table shows the median round).\n\n\
             - Operator peak RSS (VmHWM): {rss:.1} MiB.\n\
             - The {jobs} job creates returned after {oc:.2} s; every job had a status after {ost:.2} s.\n\
             - Besides the pods the operator made {svc} Services and {cm} ConfigMaps and recorded {ev} Events on the jobs.\n\n\
             {note}\n",
            date = self.date,
            jobs = self.jobs,
            ppj = self.pods_per_job,
            k8s = self.kubernetes,
            cpus = m.cpus,
            model = m.cpu_model,
            mem = m.memory_gib,
            ds = d.seconds,
            dps = pods / d.seconds,
            os = o.seconds_to_pods,
            ops = pods / o.seconds_to_pods,
            ratio = self.ratio(),
            n = self.rounds.len(),
            ratios = ratios.join(", "),
            rss = o.peak_rss_mib,
            oc = o.seconds_to_creates,
            ost = o.seconds_to_statuses,
            svc = o.services,
            cm = o.config_maps,
            ev = o.events,
            note = OPERATOR_WORK,
        )
    }
}
