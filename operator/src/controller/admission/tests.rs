use super::*;

fn node(name: &str, gpus: u32, in_use: u32) -> NodeCapacity {
    NodeCapacity {
        name: name.into(),
        labels: BTreeMap::new(),
        taints: vec![],
        ready: true,
        gpus,
        gpus_in_use: in_use,
        colocated_jobs: BTreeSet::new(),
    }
}

fn gang(key: &str, pods: u32, gpus_per_pod: u32) -> GangRequest {
    GangRequest {
        key: key.into(),
        priority: 0,
        created: "2026-11-28T10:00:00Z".into(),
        pods,
        gpus_per_pod,
        node_selector: BTreeMap::new(),
        tolerations: vec![],
        colocate: None,
    }
}

fn admitted(d: &Admission) -> bool {
    matches!(d, Admission::Admit { .. })
}

#[test]
fn two_jobs_that_each_need_most_gpus_never_hold_a_partial_gang() {
    // 2 nodes x 4 GPUs; each job wants 3 pods x 2 GPUs = 6 of the 8.
    let nodes = [node("n1", 4, 0), node("n2", 4, 0)];
    let first = GangRequest {
        created: "2026-11-28T10:00:00Z".into(),
        ..gang("ns/a/sft", 3, 2)
    };
    let second = GangRequest {
        created: "2026-11-28T10:00:01Z".into(),
        ..gang("ns/b/sft", 3, 2)
    };
    let decisions = admit(&nodes, &[second.clone(), first.clone()]);
    match &decisions[1] {
        Admission::Admit { nodes } => assert_eq!(nodes.len(), 3),
        other => panic!("the older job goes first: {other:?}"),
    }
    assert_eq!(
        decisions[0],
        Admission::Queued {
            position: 1,
            reason: "needs 3 pods x 2 GPUs; 2 of 8 GPUs free on 2 eligible nodes".into()
        }
    );
    // Once the first is running (its GPUs in use), the second still waits; when it ends, it runs.
    let busy = [node("n1", 4, 4), node("n2", 4, 2)];
    assert!(!admitted(&admit(&busy, std::slice::from_ref(&second))[0]));
    assert!(admitted(&admit(&nodes, std::slice::from_ref(&second))[0]));
}

#[test]
fn pods_must_fit_whole_on_nodes() {
    // 3 free GPUs on each of two nodes: 6 free, but a 4-GPU pod fits nowhere.
    let nodes = [node("n1", 4, 1), node("n2", 4, 1)];
    assert!(!admitted(&admit(&nodes, &[gang("ns/j/rm", 1, 4)])[0]));
    assert_eq!(
        admit(&nodes, &[gang("ns/j/rm", 2, 3)])[0],
        Admission::Admit {
            nodes: vec!["n1".into(), "n2".into()]
        }
    );
}

#[test]
fn priority_then_age_orders_the_queue_and_nobody_jumps_a_blocked_gang() {
    let nodes = [node("n1", 8, 0)];
    let big_old = GangRequest {
        created: "2026-11-28T09:00:00Z".into(),
        ..gang("ns/big/ppo", 1, 8)
    };
    let small_new = GangRequest {
        created: "2026-11-28T11:00:00Z".into(),
        ..gang("ns/small/sft", 1, 1)
    };
    let urgent = GangRequest {
        priority: 100,
        created: "2026-11-28T12:00:00Z".into(),
        ..gang("ns/urgent/sft", 1, 2)
    };
    let d = admit(&nodes, &[big_old, small_new, urgent]);
    assert!(admitted(&d[2]), "highest priority first: {d:?}");
    assert_eq!(
        d[0],
        Admission::Queued {
            position: 1,
            reason: "needs 1 pods x 8 GPUs; 6 of 8 GPUs free on 1 eligible nodes".into()
        }
    );
    assert_eq!(
        d[1],
        Admission::Queued {
            position: 2,
            reason: "waiting behind ns/big/ppo".into()
        }
    );
}

#[test]
fn node_selectors_taints_and_readiness_limit_where_a_gang_may_go() {
    let mut gpu_pool = node("gpu", 8, 0);
    gpu_pool.labels.insert("pool".into(), "a100".into());
    gpu_pool.taints.push(Taint {
        key: "nvidia.com/gpu".into(),
        effect: "NoSchedule".into(),
        value: Some("present".into()),
        time_added: None,
    });
    let mut not_ready = node("down", 8, 0);
    not_ready.ready = false;
    let nodes = [node("cpu", 8, 0), gpu_pool, not_ready];
    let mut picky = gang("ns/j/sft", 1, 8);
    picky.node_selector.insert("pool".into(), "a100".into());
    let d = admit(&nodes, std::slice::from_ref(&picky));
    assert_eq!(
        d[0],
        Admission::Queued {
            position: 1,
            reason:
                "no ready node matches the gang's node selector and tolerations (8 GPUs needed)"
                    .into()
        }
    );
    picky.tolerations.push(Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    });
    assert_eq!(
        admit(&nodes, &[picky])[0],
        Admission::Admit {
            nodes: vec!["gpu".into()]
        }
    );
}

#[test]
fn toleration_matching_follows_kubernetes() {
    let taint = Taint {
        key: "k".into(),
        value: Some("v".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    };
    let tol = |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Default::default()
        }
    };
    assert!(tolerates(
        &tol(Some("k"), Some("Equal"), Some("v"), Some("NoSchedule")),
        &taint
    ));
    assert!(
        tolerates(&tol(Some("k"), None, Some("v"), None), &taint),
        "Equal is the default; no effect matches all"
    );
    assert!(!tolerates(
        &tol(Some("k"), Some("Equal"), Some("w"), None),
        &taint
    ));
    assert!(
        tolerates(&tol(None, Some("Exists"), None, None), &taint),
        "empty key with Exists tolerates everything"
    );
    assert!(!tolerates(
        &tol(Some("k"), Some("Exists"), None, Some("NoExecute")),
        &taint
    ));
}

#[test]
fn unbound_pods_of_an_admitted_gang_hold_their_place() {
    let mut nodes = [node("n1", 4, 0), node("n2", 4, 0)];
    let pending = GangRequest {
        node_selector: BTreeMap::new(),
        ..gang("ns/a/sft-0", 1, 3)
    };
    reserve_unbound(&mut nodes, &[pending.clone(), pending]);
    assert_eq!(
        nodes.iter().map(|n| n.gpus_in_use).collect::<Vec<_>>(),
        vec![3, 3]
    );
    assert!(
        !admitted(&admit(&nodes, &[gang("ns/b/sft", 1, 2)])[0]),
        "only 1 GPU is left on each node"
    );
    // A pod whose selector matches no node reserves nothing.
    let mut nodes = [node("n1", 4, 0)];
    let elsewhere = GangRequest {
        node_selector: BTreeMap::from([("pool".into(), "other".into())]),
        ..gang("ns/c/rm-0", 1, 4)
    };
    reserve_unbound(&mut nodes, &[elsewhere]);
    assert_eq!(nodes[0].gpus_in_use, 0);
}

#[test]
fn a_single_node_volume_keeps_all_of_a_jobs_gangs_on_one_node() {
    // sft and rm of one job (ReadWriteOnce volume) start together: one node takes both, even
    // though spreading them would leave more room on each.
    let nodes = [node("n1", 2, 0), node("n2", 2, 0)];
    let colocated = |key: &str| GangRequest {
        colocate: Some("ns/j".into()),
        ..gang(key, 1, 1)
    };
    let d = admit(&nodes, &[colocated("ns/j/sft"), colocated("ns/j/rm")]);
    let Admission::Admit { nodes: first } = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!(
        d[1],
        Admission::Admit {
            nodes: first.clone()
        },
        "both on one node"
    );

    // With a pod of the job already on n1, its next gang goes there, though n2 is emptier ...
    let settled = [
        NodeCapacity {
            colocated_jobs: BTreeSet::from(["ns/j".to_string()]),
            ..node("n1", 4, 2)
        },
        node("n2", 4, 0),
    ];
    assert_eq!(
        admit(&settled, &[colocated("ns/j/ppo")])[0],
        Admission::Admit {
            nodes: vec!["n1".into()]
        }
    );
    // ... and waits when n1 is full, saying why; other jobs are free to use n2.
    let full = [
        NodeCapacity {
            colocated_jobs: BTreeSet::from(["ns/j".to_string()]),
            ..node("n1", 4, 4)
        },
        node("n2", 4, 0),
    ];
    let d = admit(&full, &[colocated("ns/j/ppo"), gang("ns/other/sft", 1, 1)]);
    let Admission::Queued { reason, .. } = &d[0] else {
        panic!("{d:?}")
    };
    assert!(
        reason.contains("on node n1, where the job's other pods are")
            && reason.contains("0 of 4 GPUs free there"),
        "{reason}"
    );
    assert_eq!(
        d[1],
        Admission::Queued {
            position: 2,
            reason: "waiting behind ns/j/ppo".into()
        },
        "no jumping ahead"
    );
}

#[test]
fn unbound_colocated_pods_are_counted_on_their_jobs_node() {
    let mut nodes = [
        NodeCapacity {
            colocated_jobs: BTreeSet::from(["ns/j".to_string()]),
            ..node("n1", 2, 1)
        },
        node("n2", 8, 0),
    ];
    let unbound = GangRequest {
        colocate: Some("ns/j".into()),
        ..gang("ns/j-rm-0", 1, 1)
    };
    reserve_unbound(&mut nodes, &[unbound]);
    assert_eq!(
        (nodes[0].gpus_in_use, nodes[1].gpus_in_use),
        (2, 0),
        "on n1 with its job, not on the emptier n2"
    );
}
