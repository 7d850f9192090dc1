//! Grouping work into forward batches by a token budget (not by request count).

use std::ops::Range;

/// Split items of the given token lengths, in order, into contiguous batches of
/// at most `budget` tokens. An item larger than the budget gets a batch of its own.
pub fn plan_batches(lens: &[usize], budget: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, &len) in lens.iter().enumerate() {
        if i > start && used + len > budget {
            out.push(start..i);
            start = i;
            used = 0;
        }
        used += len;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plan_batches;

    #[test]
    fn fills_to_the_budget_in_order() {
        assert_eq!(plan_batches(&[3, 3, 3, 3], 7), vec![0..2, 2..4]);
        assert_eq!(plan_batches(&[10, 1, 1], 5), vec![0..1, 1..3]);
        assert_eq!(plan_batches(&[1, 10, 1], 5), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan_batches(&[], 5), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(plan_batches(&[5, 5], 10), vec![0..2]);
    }
}
