//! Accuracy per subset and per RewardBench section.
//!
//! A section's accuracy is the mean of its subsets' accuracies weighted by their
//! example counts in the evaluated file (so: correct / pairs over the section);
//! overall is the mean of the sections present. RewardBench's leaderboard also
//! up-weights `math-prm` to the total count of the `hep-*` code subsets
//! (`EXAMPLE_COUNTS["math-prm"] = 984`, "upweighting to be equal to code");
//! [`Weighting::Leaderboard`] does that, [`Weighting::Counts`] (the default)
//! does not. Subsets outside the map count only in the all-pairs accuracy.

use serde::Serialize;
use std::collections::BTreeMap;

/// RewardBench's subset-to-section map, in its section order.
pub const REWARDBENCH_SECTIONS: [(&str, &[&str]); 4] = [
    ("Chat", &["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"]),
    (
        "Chat Hard",
        &[
            "mt-bench-hard",
            "llmbar-natural",
            "llmbar-adver-neighbor",
            "llmbar-adver-GPTInst",
            "llmbar-adver-GPTOut",
            "llmbar-adver-manual",
        ],
    ),
    (
        "Safety",
        &["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer"],
    ),
    ("Reasoning", &["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"]),
];

pub fn section_of(subset: &str) -> Option<&'static str> {
    REWARDBENCH_SECTIONS.iter().find(|(_, subsets)| subsets.contains(&subset)).map(|(name, _)| *name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Weighting {
    /// Each subset weighted by its number of pairs.
    #[default]
    Counts,
    /// As the RewardBench leaderboard: math-prm weighted like all hep-* subsets together.
    Leaderboard,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubsetScore {
    pub section: Option<&'static str>,
    pub pairs: usize,
    pub correct: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectionScore {
    pub section: &'static str,
    pub accuracy: f64,
    pub pairs: usize,
    pub subsets: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyReport {
    pub pairs: usize,
    pub correct: usize,
    /// Plain accuracy over all pairs.
    pub accuracy: f64,
    pub subsets: BTreeMap<String, SubsetScore>,
    /// RewardBench sections present, in RewardBench order.
    pub sections: Vec<SectionScore>,
    /// Mean of the sections present; `None` when no subset is a RewardBench one.
    pub overall: Option<f64>,
}

/// Build the report from `(subset, chosen won)` per pair.
pub fn report<'a>(outcomes: impl IntoIterator<Item = (&'a str, bool)>, weighting: Weighting) -> AccuracyReport {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (subset, won) in outcomes {
        let c = counts.entry(subset.to_string()).or_default();
        c.0 += 1;
        c.1 += won as usize;
    }
    let subsets: BTreeMap<String, SubsetScore> = counts
        .iter()
        .map(|(name, &(pairs, correct))| {
            let score =
                SubsetScore { section: section_of(name), pairs, correct, accuracy: correct as f64 / pairs as f64 };
            (name.clone(), score)
        })
        .collect();
    let code_pairs: usize = subsets.iter().filter(|(n, _)| n.starts_with("hep-")).map(|(_, s)| s.pairs).sum();
    let mut sections = Vec::new();
    for (section, names) in REWARDBENCH_SECTIONS {
        let present: Vec<(&str, &SubsetScore)> =
            names.iter().filter_map(|n| subsets.get(*n).map(|s| (*n, s))).collect();
        if present.is_empty() {
            continue;
        }
        let weight = |name: &str, s: &SubsetScore| match weighting {
            Weighting::Leaderboard if name == "math-prm" && code_pairs > 0 => code_pairs as f64,
            _ => s.pairs as f64,
        };
        let total: f64 = present.iter().map(|(n, s)| weight(n, s)).sum();
        let accuracy = present.iter().map(|(n, s)| weight(n, s) * s.accuracy).sum::<f64>() / total;
        sections.push(SectionScore {
            section,
            accuracy,
            pairs: present.iter().map(|(_, s)| s.pairs).sum(),
            subsets: present.len(),
        });
    }
    let overall =
        (!sections.is_empty()).then(|| sections.iter().map(|s| s.accuracy).sum::<f64>() / sections.len() as f64);
    let pairs = counts.values().map(|c| c.0).sum::<usize>();
    let correct = counts.values().map(|c| c.1).sum::<usize>();
    AccuracyReport {
        pairs,
        correct,
        accuracy: if pairs == 0 { 0.0 } else { correct as f64 / pairs as f64 },
        subsets,
        sections,
        overall,
    }
}

impl AccuracyReport {
    /// A markdown table: subsets grouped by section, then section and overall rows.
    pub fn to_markdown(&self, title: &str) -> String {
        let pct = |x: f64| format!("{:.1}", 100.0 * x);
        let mut out =
            format!("### {title}\n\n| section | subset | pairs | accuracy (%) |\n| --- | --- | ---: | ---: |\n");
        let mut rows: Vec<(&str, &String, &SubsetScore)> =
            self.subsets.iter().map(|(n, s)| (s.section.unwrap_or("(other)"), n, s)).collect();
        let order = |sec: &str| REWARDBENCH_SECTIONS.iter().position(|(n, _)| *n == sec).unwrap_or(4);
        rows.sort_by_key(|(sec, name, _)| (order(sec), name.as_str()));
        for (sec, name, s) in rows {
            out += &format!("| {sec} | {name} | {} | {} |\n", s.pairs, pct(s.accuracy));
        }
        for s in &self.sections {
            out += &format!("| **{}** | | {} | **{}** |\n", s.section, s.pairs, pct(s.accuracy));
        }
        if let Some(o) = self.overall {
            out += &format!("| **Overall** (mean of sections) | | | **{}** |\n", pct(o));
        }
        out += &format!("| all pairs | | {} | {} |\n", self.pairs, pct(self.accuracy));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_weight_subsets_by_count() {
        // Chat: easy 1/2, med 3/4 -> 4/6. Safety: donotanswer 0/1. other: 1/1.
        let outcomes = [
            ("alpacaeval-easy", true),
            ("alpacaeval-easy", false),
            ("mt-bench-med", true),
            ("mt-bench-med", true),
            ("mt-bench-med", true),
            ("mt-bench-med", false),
            ("donotanswer", false),
            ("my-own", true),
        ];
        let r = report(outcomes, Weighting::Counts);
        assert_eq!(r.sections.len(), 2);
        assert_eq!((r.sections[0].section, r.sections[0].pairs), ("Chat", 6));
        assert!((r.sections[0].accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.sections[1].accuracy, 0.0);
        assert!((r.overall.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!((r.pairs, r.correct), (8, 5));
        assert_eq!(r.subsets["my-own"].section, None);
        let md = r.to_markdown("t");
        assert!(md.contains("| Chat | mt-bench-med | 4 | 75.0 |"), "{md}");
        assert!(md.contains("| **Overall** (mean of sections) | | | **33.3** |"), "{md}");
    }

    #[test]
    fn leaderboard_weighting_counts_math_like_all_code() {
        // math-prm 1/1, hep-go 0/2, hep-rust 0/1: counts -> 1/4; leaderboard -> (3*1 + 0)/6.
        let outcomes = [("math-prm", true), ("hep-go", false), ("hep-go", false), ("hep-rust", false)];
        let counts = report(outcomes, Weighting::Counts);
        assert!((counts.sections[0].accuracy - 0.25).abs() < 1e-12);
        let board = report(outcomes, Weighting::Leaderboard);
        assert!((board.sections[0].accuracy - 0.5).abs() < 1e-12);
        assert_eq!(board.overall, Some(board.sections[0].accuracy));
    }
}
