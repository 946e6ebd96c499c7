//! Spec -> resolved pipeline: fills every default and checks every rule the OpenAPI schema cannot
//! express (cross-field, cross-stage). Pure; errors name the offending field.
mod links;
mod model;
mod resolve_rl;
mod resolve_stage;

use std::collections::BTreeMap;
use std::fmt;

use crate::{PipelineSpec, ResolvedModel, ResolvedStage, dag};

/// One problem in a spec, with the JSON path of the field (`spec.stages[1].dependsOn[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A pipeline whose every stage is resolved, with a valid execution order.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedPipeline {
    pub model: ResolvedModel,
    /// In spec order.
    pub stages: Vec<ResolvedStage>,
    /// Stage names, dependencies first.
    pub order: Vec<String>,
}

impl ResolvedPipeline {
    pub fn stage(&self, name: &str) -> Option<&ResolvedStage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Resolves `spec` (found at JSON path `at`, e.g. `spec`), or returns every problem found.
pub fn resolve_pipeline(
    spec: &PipelineSpec,
    at: &str,
) -> Result<ResolvedPipeline, Vec<FieldError>> {
    let linked = links::with_default_links(spec);
    let spec = &linked;
    let mut errors = Vec::new();
    let model = model::resolve_model(&spec.model, &format!("{at}.model"), &mut errors);
    let graph = check_graph(spec, at, &mut errors);
    let order = match dag::topological_order(&graph) {
        Ok(order) => order,
        Err(cycle) => {
            errors.push(FieldError::new(
                format!("{at}.stages"),
                format!("dependsOn forms a cycle: {}", cycle.join(" -> ")),
            ));
            Vec::new()
        }
    };
    let ctx = resolve_stage::StageContext {
        spec,
        graph: &graph,
        model: model.as_ref(),
    };
    let stages: Vec<ResolvedStage> = spec
        .stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            resolve_stage::resolve_stage(&ctx, s, &format!("{at}.stages[{i}]"), &mut errors)
        })
        .collect();
    match (model, errors.is_empty()) {
        (Some(model), true) => Ok(ResolvedPipeline {
            model,
            stages,
            order,
        }),
        _ => Err(errors),
    }
}

/// Checks names and dependsOn; returns the graph of known, distinct dependencies.
fn check_graph<'a>(
    spec: &'a PipelineSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    if spec.stages.is_empty() {
        errors.push(FieldError::new(
            format!("{at}.stages"),
            "at least one stage is required",
        ));
    }
    let mut first_index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        if !is_dns_label(&stage.name) || stage.name.len() > 20 {
            errors.push(FieldError::new(
                format!("{at}.stages[{i}].name"),
                format!(
                    "{:?} must be 1-20 lowercase letters, digits or '-', starting with a letter",
                    stage.name
                ),
            ));
        }
        if let Some(j) = first_index.get(stage.name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.stages[{i}].name"),
                format!("duplicate stage name {:?} (also stages[{j}])", stage.name),
            ));
        } else {
            first_index.insert(&stage.name, i);
        }
    }
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let mut deps: Vec<&str> = Vec::new();
        for (k, dep) in stage.depends_on.iter().enumerate() {
            let field = format!("{at}.stages[{i}].dependsOn[{k}]");
            if dep == &stage.name {
                errors.push(FieldError::new(field, "a stage cannot depend on itself"));
            } else if !first_index.contains_key(dep.as_str()) {
                errors.push(FieldError::new(field, format!("unknown stage {dep:?}")));
            } else if deps.contains(&dep.as_str()) {
                errors.push(FieldError::new(field, format!("{dep:?} is listed twice")));
            } else {
                deps.push(dep);
            }
        }
        graph.entry(&stage.name).or_insert(deps);
    }
    graph
}

/// RFC 1123 label without the length limit: `[a-z]([-a-z0-9]*[a-z0-9])?`.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests;
