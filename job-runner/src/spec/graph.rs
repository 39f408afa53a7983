//! Checks on the task graph: references to unknown tasks, duplicate or self
//! dependencies, `n_to_n` between tasks of different sizes, and cycles (named).

use std::collections::BTreeMap;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use super::check::Checker;
use super::{DepType, JobSpec, PathSeg, SpecLocs};

/// Records every graph problem of `spec` in `c`.
pub fn check(spec: &JobSpec, locs: &SpecLocs<'_>, c: &mut Checker) {
    let by_name: BTreeMap<&str, usize> = spec
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.name.is_empty())
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let known = || {
        let names: Vec<&str> = by_name.keys().copied().collect();
        names.join(", ")
    };
    // Edge from a task to each task it depends on, remembering where it was written.
    let mut g: DiGraph<usize, usize> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..spec.tasks.len()).map(|i| g.add_node(i)).collect();
    for (ti, t) in spec.tasks.iter().enumerate() {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (di, d) in t.depends_on.iter().enumerate() {
            let path = format!("tasks[{ti}].depends_on[{di}].task");
            let dep_loc = locs.at(&[
                PathSeg::Key("tasks"),
                PathSeg::Index(ti),
                PathSeg::Key("depends_on"),
                PathSeg::Index(di),
                PathSeg::Key("task"),
            ]);
            if let Some(first) = seen.insert(d.task.as_str(), di) {
                c.push(
                    dep_loc,
                    &path,
                    format!("depends on `{}` twice (also depends_on[{first}])", d.task),
                );
                continue;
            }
            let Some(&up) = by_name.get(d.task.as_str()) else {
                c.hint(
                    dep_loc,
                    &path,
                    format!("unknown task `{}`", d.task),
                    format!("tasks in this job: {}", known()),
                );
                continue;
            };
            if up == ti {
                c.push(
                    dep_loc,
                    &path,
                    format!("dependency cycle: task `{}` depends on itself", t.name),
                );
                continue;
            }
            if d.kind == DepType::NToN && spec.tasks[up].instances != t.instances {
                c.hint(
                    locs.at(&[
                        PathSeg::Key("tasks"),
                        PathSeg::Index(ti),
                        PathSeg::Key("depends_on"),
                        PathSeg::Index(di),
                        PathSeg::Key("type"),
                    ]),
                    &format!("tasks[{ti}].depends_on[{di}].type"),
                    format!(
                        "n_to_n needs the same number of instances on both sides, but `{}` has {} and `{}` has {}",
                        t.name, t.instances, spec.tasks[up].name, spec.tasks[up].instances
                    ),
                    "use type: all, or make the counts equal",
                );
            }
            g.add_edge(nodes[ti], nodes[up], di);
        }
    }
    for scc in tarjan_scc(&g) {
        if scc.len() < 2 {
            continue;
        }
        let start = *scc.iter().min_by_key(|n| g[**n]).unwrap_or(&scc[0]);
        let cycle = find_cycle(&g, start, &scc);
        let names: Vec<&str> = cycle
            .iter()
            .map(|n| spec.tasks[g[*n]].name.as_str())
            .collect();
        let ti = g[start];
        // Point at the dependency that starts the cycle.
        let next = cycle.get(1).copied().unwrap_or(start);
        let di = g
            .edges_connecting(start, next)
            .next()
            .map(|e| *e.weight())
            .unwrap_or(0);
        c.push(
            locs.at(&[
                PathSeg::Key("tasks"),
                PathSeg::Index(ti),
                PathSeg::Key("depends_on"),
                PathSeg::Index(di),
            ]),
            &format!("tasks[{ti}].depends_on[{di}]"),
            format!(
                "dependency cycle: {} (each task depends on the next)",
                names.join(" -> ")
            ),
        );
    }
}

/// A path start -> ... -> start inside one strongly connected component.
fn find_cycle(g: &DiGraph<usize, usize>, start: NodeIndex, scc: &[NodeIndex]) -> Vec<NodeIndex> {
    // Breadth-first from start's successors back to start gives the shortest cycle,
    // which is the easiest one to read.
    let mut prev: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::new();
    let mut succ: Vec<NodeIndex> = g.neighbors(start).filter(|n| scc.contains(n)).collect();
    succ.sort_by_key(|n| g[*n]);
    for n in succ {
        if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(n) {
            e.insert(start);
            queue.push_back(n);
        }
    }
    while let Some(cur) = queue.pop_front() {
        if cur == start {
            break;
        }
        let mut next: Vec<NodeIndex> = g.neighbors(cur).filter(|n| scc.contains(n)).collect();
        next.sort_by_key(|n| g[*n]);
        for n in next {
            if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(n) {
                e.insert(cur);
                queue.push_back(n);
            }
        }
    }
    let mut path = vec![start];
    let mut cur = start;
    // Walk predecessors back from start (reached last) to rebuild the loop.
    for _ in 0..=scc.len() {
        match prev.get(&cur) {
            Some(&p) if p != start => {
                path.push(p);
                cur = p;
            }
            _ => break,
        }
    }
    path.push(start);
    // `path` is start <- ... <- start; the forward direction is its reverse.
    path.reverse();
    path
}

/// Tasks in an order where every task comes after the tasks it depends on. The spec
/// must be valid (acyclic).
pub fn topo_order(spec: &JobSpec) -> Vec<usize> {
    let by_name: BTreeMap<&str, usize> = spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..spec.tasks.len()).map(|i| g.add_node(i)).collect();
    for (ti, t) in spec.tasks.iter().enumerate() {
        for d in &t.depends_on {
            if let Some(&up) = by_name.get(d.task.as_str()) {
                g.add_edge(nodes[up], nodes[ti], ());
            }
        }
    }
    match petgraph::algo::toposort(&g, None) {
        Ok(order) => order.into_iter().map(|n| g[n]).collect(),
        Err(_) => (0..spec.tasks.len()).collect(),
    }
}
