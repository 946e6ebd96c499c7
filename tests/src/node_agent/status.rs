//! Pod status as a kubelet reports it: the JSON (pure) and the patches that write it.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};

/// How a container ended, in the terms of its terminated state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Termination {
    pub phase: &'static str,
    pub exit_code: i32,
    pub reason: &'static str,
}

/// From a process's exit code, or the signal that killed it (shells' 128 + N).
pub fn termination(code: Option<i32>, signal: Option<i32>) -> Termination {
    let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
    if exit_code == 0 {
        Termination {
            phase: "Succeeded",
            exit_code,
            reason: "Completed",
        }
    } else {
        Termination {
            phase: "Failed",
            exit_code,
            reason: "Error",
        }
    }
}

/// Where the pod runs and since when: the parts every status patch repeats.
pub struct Placement<'a> {
    pub uid: &'a str,
    pub container: &'a str,
    pub image: &'a str,
    pub pod_ip: Ipv4Addr,
    pub started_at: &'a str,
}

fn conditions(ready: bool, now: &str) -> Value {
    let ready = if ready { "True" } else { "False" };
    json!([
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "Ready", "status": ready, "lastTransitionTime": now},
        {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
    ])
}

/// A merge patch for the status subresource; metadata.uid makes the API server refuse it for a
/// newer pod of the same name (the operator reuses names).
fn patch(p: &Placement, phase: &str, ready: bool, state: Value, extra: Value, now: &str) -> Value {
    let mut status = json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": p.pod_ip.to_string(),
        "podIPs": [{"ip": p.pod_ip.to_string()}],
        "startTime": p.started_at,
        "conditions": conditions(ready, now),
        "containerStatuses": [{
            "name": p.container, "image": p.image, "imageID": "", "ready": ready, "started": ready,
            "restartCount": 0, "state": state
        }]
    });
    if let (Some(status), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
        status.extend(extra.clone());
    }
    json!({"metadata": {"uid": p.uid}, "status": status})
}

pub fn running(p: &Placement, now: &str) -> Value {
    patch(
        p,
        "Running",
        true,
        json!({"running": {"startedAt": p.started_at}}),
        json!({}),
        now,
    )
}

/// `message`: the termination message, if there is one.
pub fn terminated(p: &Placement, t: Termination, message: Option<&str>, now: &str) -> Value {
    let mut state = json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason, "startedAt": p.started_at, "finishedAt": now}});
    if let Some(m) = message {
        state["terminated"]["message"] = json!(m);
    }
    patch(p, t.phase, false, state, json!({}), now)
}

/// The kubelet's FallbackToLogsOnError message: the end of the log of a container that failed,
/// at most 80 lines and 2048 bytes (cut at a line boundary where it can be).
pub fn log_tail_message(log: &str) -> String {
    const MAX_BYTES: usize = 2048;
    let lines: Vec<&str> = log.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(80)..].join("\n");
    if tail.len() > MAX_BYTES {
        let mut start = tail.len() - MAX_BYTES;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        let cut = &tail[start..];
        tail = cut
            .split_once('\n')
            .map_or(cut, |(_, rest)| rest)
            .to_string();
    }
    tail
}

/// The pod could not be started at all (bad spec, missing volume source, ...): Failed with why.
pub fn cannot_run(p: &Placement, message: &str, now: &str) -> Value {
    let state = json!({"terminated": {"exitCode": 128, "reason": "ContainerCannotRun", "message": message,
                                      "startedAt": p.started_at, "finishedAt": now}});
    patch(
        p,
        "Failed",
        false,
        state,
        json!({"reason": "ContainerCannotRun", "message": message}),
        now,
    )
}

/// A kubelet found a pod it had been running, but the process is gone (the agent restarted).
pub fn lost(p: &Placement, now: &str) -> Value {
    let message = "rlhf-node-agent restarted and lost this pod's process";
    let state = json!({"terminated": {"exitCode": 137, "reason": "Error", "message": message, "startedAt": p.started_at, "finishedAt": now}});
    patch(
        p,
        "Failed",
        false,
        state,
        json!({"reason": "NodeAgentRestarted", "message": message}),
        now,
    )
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Writes a status patch; a pod that is gone or was replaced (404/409) is not an error.
pub async fn write(pods: &Api<Pod>, name: &str, body: Value) -> kube::Result<()> {
    let mut attempt = 0;
    loop {
        match pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(()),
            Err(e) if attempt < 3 => {
                tracing::warn!(pod = name, error = %e, "status patch failed; retrying");
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The kubelet's final delete once the containers are gone: grace 0, only this very pod.
pub async fn final_delete(pods: &Api<Pod>, name: &str, uid: &str) -> kube::Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_containers_message_is_the_end_of_its_log() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail_message(&log);
        assert!(
            tail.starts_with("line 21\n") && tail.ends_with("line 100"),
            "{tail}"
        );
        let long = format!("{}\nerror: the end\n", "x".repeat(5000));
        assert_eq!(log_tail_message(&long), "error: the end");
    }

    #[test]
    fn exit_codes_and_signals_map_like_a_container_runtime() {
        assert_eq!(
            termination(Some(0), None),
            Termination {
                phase: "Succeeded",
                exit_code: 0,
                reason: "Completed"
            }
        );
        assert_eq!(
            termination(Some(2), None),
            Termination {
                phase: "Failed",
                exit_code: 2,
                reason: "Error"
            }
        );
        assert_eq!(
            termination(None, Some(9)),
            Termination {
                phase: "Failed",
                exit_code: 137,
                reason: "Error"
            }
        );
        assert_eq!(termination(None, Some(15)).exit_code, 143);
    }

    #[test]
    fn patches_carry_uid_ip_and_container_state() {
        let p = Placement {
            uid: "u-1",
            container: "trainer",
            image: "img",
            pod_ip: Ipv4Addr::new(127, 1, 2, 3),
            started_at: "t0",
        };
        let run = running(&p, "t1");
        assert_eq!(run["metadata"]["uid"], "u-1");
        assert_eq!(run["status"]["phase"], "Running");
        assert_eq!(run["status"]["podIP"], "127.1.2.3");
        assert_eq!(run["status"]["hostIP"], "127.0.0.1");
        assert_eq!(run["status"]["containerStatuses"][0]["name"], "trainer");
        assert_eq!(
            run["status"]["containerStatuses"][0]["state"]["running"]["startedAt"],
            "t0"
        );
        let ready: Vec<_> = run["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].clone())
            .collect();
        assert!(ready.iter().all(|s| s == "True"));

        let done = terminated(&p, termination(None, Some(9)), None, "t2");
        assert_eq!(done["status"]["phase"], "Failed");
        let t = &done["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(
            (
                t["exitCode"].as_i64(),
                t["reason"].as_str(),
                t["finishedAt"].as_str()
            ),
            (Some(137), Some("Error"), Some("t2"))
        );

        let bad = cannot_run(&p, "pod ns/x: no command", "t3");
        assert_eq!(bad["status"]["phase"], "Failed");
        assert_eq!(bad["status"]["message"], "pod ns/x: no command");
    }
}
