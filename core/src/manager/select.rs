//! Choosing a model for a task: filter by task tag, memory and score, rank by
//! priority then score, and say why each candidate was taken or skipped.
use super::budget::format_bytes;
use super::registry::ModelEntry;
use std::cmp::Ordering;

#[derive(Debug, Clone)]
pub struct SelectQuery {
    /// Required task tag; None = any model.
    pub task: Option<String>,
    /// Largest acceptable estimate (weights + KV cache for `context_length`).
    pub max_memory: Option<u64>,
    /// Smallest acceptable value of the `score_key` score; a model without that score is skipped.
    pub min_score: Option<f64>,
    /// Which score ranks and filters (default "quality").
    pub score_key: String,
    /// Tokens of KV cache to include in each estimate.
    pub context_length: usize,
}

impl Default for SelectQuery {
    fn default() -> Self {
        SelectQuery { task: None, max_memory: None, min_score: None, score_key: "quality".into(), context_length: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    /// Passed every filter.
    pub eligible: bool,
    pub chosen: bool,
    /// Why it was chosen, ranked lower, or skipped.
    pub reason: String,
    pub priority: u32,
    pub score: Option<f64>,
    pub estimate_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Selection {
    pub chosen: Option<String>,
    /// Eligible candidates in rank order, then the skipped ones.
    pub candidates: Vec<Candidate>,
}

impl Selection {
    /// One line per candidate, for logs and the CLI.
    pub fn explain(&self) -> String {
        self.candidates.iter().map(|c| format!("{}: {}", c.name, c.reason)).collect::<Vec<_>>().join("\n")
    }
}

/// Lower priority number first, then higher score (unscored last), then the
/// smaller estimate, then name (so the order is total and stable).
pub(crate) fn rank(a: &ModelEntry, b: &ModelEntry, key: &str, ctx: usize) -> Ordering {
    a.meta
        .priority
        .cmp(&b.meta.priority)
        .then_with(|| match (a.score(key), b.score(key)) {
            (Some(x), Some(y)) => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.estimate_bytes(ctx).cmp(&b.estimate_bytes(ctx)))
        .then_with(|| a.name.cmp(&b.name))
}

pub fn select<'a>(entries: impl IntoIterator<Item = &'a ModelEntry>, q: &SelectQuery) -> Selection {
    let key = q.score_key.as_str();
    let ctx = q.context_length;
    let mut ok: Vec<&ModelEntry> = Vec::new();
    let mut skipped: Vec<Candidate> = Vec::new();
    for e in entries {
        let est = e.estimate_bytes(ctx);
        let skip = if let Some(t) = q.task.as_deref().filter(|t| !e.has_task(t)) {
            let tags = if e.meta.tasks.is_empty() { "none".into() } else { e.meta.tasks.join(", ") };
            Some(format!("skipped: no task tag \"{t}\" (tags: {tags})"))
        } else if let Some(m) = q.max_memory.filter(|&m| est > m) {
            Some(format!("skipped: needs {} > max_memory {}", format_bytes(est), format_bytes(m)))
        } else if let Some(min) = q.min_score {
            match e.score(key) {
                None => Some(format!("skipped: no \"{key}\" score (min_score {min})")),
                Some(s) if s < min => Some(format!("skipped: {key} {s} < min_score {min}")),
                _ => None,
            }
        } else {
            None
        };
        match skip {
            Some(reason) => skipped.push(Candidate {
                name: e.name.clone(),
                eligible: false,
                chosen: false,
                reason,
                priority: e.meta.priority,
                score: e.score(key),
                estimate_bytes: est,
            }),
            None => ok.push(e),
        }
    }
    ok.sort_by(|a, b| rank(a, b, key, ctx));
    let describe = |e: &ModelEntry| {
        let score = e.score(key).map(|s| format!("{key} {s}")).unwrap_or_else(|| format!("no {key} score"));
        format!("priority {}, {score}, needs {}", e.meta.priority, format_bytes(e.estimate_bytes(ctx)))
    };
    let mut candidates = Vec::new();
    for (i, e) in ok.iter().enumerate() {
        let reason = if i == 0 {
            format!("chosen: {}", describe(e))
        } else {
            let best = ok[0];
            let why = if e.meta.priority != best.meta.priority {
                format!("priority {} is below {}'s {}", e.meta.priority, best.name, best.meta.priority)
            } else if e.score(key) != best.score(key) {
                format!("{key} {:?} is below {}'s {:?}", e.score(key), best.name, best.score(key))
            } else {
                format!("ties with {} and is larger or later by name", best.name)
            };
            format!("eligible, ranked #{}: {why} ({})", i + 1, describe(e))
        };
        candidates.push(Candidate {
            name: e.name.clone(),
            eligible: true,
            chosen: i == 0,
            reason,
            priority: e.meta.priority,
            score: e.score(key),
            estimate_bytes: e.estimate_bytes(ctx),
        });
    }
    let chosen = candidates.first().map(|c| c.name.clone());
    candidates.extend(skipped);
    Selection { chosen, candidates }
}
