//! Stage dependency graph: ordering and cycle detection (pure).
use std::collections::BTreeMap;

/// Returns the stages in an order where every stage comes after its dependencies, or the names
/// on a cycle. `deps` maps a stage to its dependencies; unknown names must be filtered out first.
pub fn topological_order(deps: &BTreeMap<&str, Vec<&str>>) -> Result<Vec<String>, Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        deps: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match marks.get(node).copied().unwrap_or(Mark::New) {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks.insert(node, Mark::Visiting);
        path.push(node);
        for dep in deps.get(node).into_iter().flatten() {
            visit(dep, deps, marks, path, order)?;
        }
        path.pop();
        marks.insert(node, Mark::Done);
        order.push(node.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut order = Vec::with_capacity(deps.len());
    for node in deps.keys() {
        visit(node, deps, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// True when `ancestor` is reachable from `stage` through dependencies.
pub fn depends_transitively(deps: &BTreeMap<&str, Vec<&str>>, stage: &str, ancestor: &str) -> bool {
    let mut stack: Vec<&str> = deps.get(stage).cloned().unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(next) = stack.pop() {
        if next == ancestor {
            return true;
        }
        if seen.insert(next) {
            stack.extend(deps.get(next).into_iter().flatten().copied());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph<'a>(edges: &[(&'a str, &[&'a str])]) -> BTreeMap<&'a str, Vec<&'a str>> {
        edges.iter().map(|(n, d)| (*n, d.to_vec())).collect()
    }

    #[test]
    fn orders_dependencies_first() {
        let g = graph(&[("ppo", &["sft", "rm"]), ("rm", &[]), ("sft", &[])]);
        let order = topological_order(&g).unwrap();
        let pos = |s: &str| order.iter().position(|x| x == s).unwrap();
        assert!(pos("sft") < pos("ppo") && pos("rm") < pos("ppo"));
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn reports_the_cycle() {
        let g = graph(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
        let cycle = topological_order(&g).unwrap_err();
        assert_eq!(cycle, vec!["a", "c", "b", "a"]);
    }

    #[test]
    fn transitive_dependency() {
        let g = graph(&[
            ("ppo", &["sft"]),
            ("sft", &["pre"]),
            ("pre", &[]),
            ("rm", &[]),
        ]);
        assert!(depends_transitively(&g, "ppo", "pre"));
        assert!(!depends_transitively(&g, "ppo", "rm"));
        assert!(!depends_transitively(&g, "pre", "ppo"));
    }
}
