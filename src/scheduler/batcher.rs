//! [`TokenBudgetBatcher`]: the waiting requests, in arrival order, and the rule
//! that turns them into the next batch. A plain struct with no channels or
//! clocks of its own, so the rule is unit-tested here (TGI keeps its queue
//! state the same way).

use std::collections::VecDeque;
use std::time::Instant;

/// What the batcher needs to know about a waiting request. Its cost in tokens
/// is not here: it depends on what the batch already holds, so
/// [`TokenBudgetBatcher::next_batch`] is given it.
pub trait Waiting {
    /// When its client stops waiting for it.
    fn deadline(&self) -> Option<Instant>;
    /// True once nobody waits for the answer (the client disconnected).
    fn abandoned(&self) -> bool;
}

/// Why a waiting request left without being scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its client went away: computing it would be waste.
    Abandoned,
    /// Its deadline passed while it waited.
    Expired,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::Abandoned => "disconnected",
            Dropped::Expired => "deadline",
        }
    }
}

/// The next batch, and the requests dropped on the way to it.
pub struct NextBatch<T> {
    pub batch: Vec<T>,
    /// Tokens of the batch (the sum of its requests' costs).
    pub tokens: usize,
    pub dropped: Vec<(T, Dropped)>,
}

/// Requests waiting for the model, taken in arrival order up to a token budget.
/// A request is never split (all turns and conversations of a request are
/// scored in the same pass) and never padded; one larger than the budget goes
/// alone and the engine splits it into forward batches.
pub struct TokenBudgetBatcher<T> {
    waiting: VecDeque<T>,
    budget: usize,
}

impl<T: Waiting> TokenBudgetBatcher<T> {
    pub fn new(budget: usize) -> Self {
        TokenBudgetBatcher { waiting: VecDeque::new(), budget: budget.max(1) }
    }

    pub fn push(&mut self, item: T) {
        self.waiting.push_back(item);
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Take requests from the front while they fit the budget (the first one
    /// always does). Abandoned and expired requests met on the way are dropped,
    /// so they cost no forward pass. Stops at the first live request that does
    /// not fit, so a long request is never overtaken for ever by short ones.
    ///
    /// `cost(item)` is what taking `item` adds to the batch, given the items
    /// taken before it (the engine thread counts tokens computed, so requests
    /// that share a prompt fill the budget by what they add). It is called once
    /// per live item considered, in order, the last one possibly not taken.
    pub fn next_batch(&mut self, now: Instant, mut cost: impl FnMut(&T) -> usize) -> NextBatch<T> {
        let mut next = NextBatch { batch: Vec::new(), tokens: 0, dropped: Vec::new() };
        while let Some(item) = self.waiting.front() {
            // Expiry first: a waiter that gave up at its deadline has also hung up.
            let why = if item.deadline().is_some_and(|d| d <= now) {
                Some(Dropped::Expired)
            } else if item.abandoned() {
                Some(Dropped::Abandoned)
            } else {
                None
            };
            if let Some(why) = why {
                let item = self.waiting.pop_front().expect("front exists");
                next.dropped.push((item, why));
                continue;
            }
            let tokens = cost(item);
            if !next.batch.is_empty() && next.tokens + tokens > self.budget {
                break;
            }
            next.tokens += tokens;
            next.batch.push(self.waiting.pop_front().expect("front exists"));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct Item {
        id: usize,
        tokens: usize,
        deadline: Option<Instant>,
        abandoned: bool,
    }

    impl Waiting for Item {
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn abandoned(&self) -> bool {
            self.abandoned
        }
    }

    /// The cost of an item on its own (nothing shared).
    fn by_tokens(item: &Item) -> usize {
        item.tokens
    }

    fn item(id: usize, tokens: usize) -> Item {
        Item { id, tokens, deadline: None, abandoned: false }
    }

    fn ids(items: &[Item]) -> Vec<usize> {
        items.iter().map(|i| i.id).collect()
    }

    fn batcher(budget: usize, items: Vec<Item>) -> TokenBudgetBatcher<Item> {
        let mut b = TokenBudgetBatcher::new(budget);
        items.into_iter().for_each(|i| b.push(i));
        b
    }

    #[test]
    fn fills_to_the_budget_in_arrival_order() {
        let now = Instant::now();
        let mut b = batcher(10, vec![item(0, 4), item(1, 4), item(2, 4), item(3, 2)]);
        let first = b.next_batch(now, by_tokens);
        assert_eq!((ids(&first.batch), first.tokens), (vec![0, 1], 8));
        let second = b.next_batch(now, by_tokens);
        assert_eq!((ids(&second.batch), second.tokens), (vec![2, 3], 6));
        assert!(b.is_empty());
        assert!(b.next_batch(now, by_tokens).batch.is_empty());
    }

    #[test]
    fn a_request_over_the_budget_goes_alone_and_is_not_overtaken() {
        let now = Instant::now();
        let mut b = batcher(10, vec![item(0, 3), item(1, 25), item(2, 1)]);
        assert_eq!(ids(&b.next_batch(now, by_tokens).batch), vec![0]);
        let big = b.next_batch(now, by_tokens);
        assert_eq!((ids(&big.batch), big.tokens), (vec![1], 25));
        assert_eq!(ids(&b.next_batch(now, by_tokens).batch), vec![2]);
    }

    #[test]
    fn exact_fit_is_one_batch() {
        let mut b = batcher(8, vec![item(0, 4), item(1, 4)]);
        assert_eq!(ids(&b.next_batch(Instant::now(), by_tokens).batch), vec![0, 1]);
    }

    #[test]
    fn abandoned_and_expired_requests_are_dropped_not_batched() {
        let now = Instant::now();
        let gone = Item { abandoned: true, ..item(1, 4) };
        let late = Item { deadline: Some(now - Duration::from_millis(1)), ..item(2, 4) };
        let on_time = Item { deadline: Some(now + Duration::from_secs(5)), ..item(3, 4) };
        let mut b = batcher(8, vec![item(0, 4), gone, late, on_time, item(4, 4)]);
        let next = b.next_batch(now, by_tokens);
        assert_eq!(ids(&next.batch), vec![0, 3]);
        let dropped: Vec<(usize, Dropped)> = next.dropped.iter().map(|(i, why)| (i.id, *why)).collect();
        assert_eq!(dropped, vec![(1, Dropped::Abandoned), (2, Dropped::Expired)]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_request_past_its_deadline_counts_as_expired_even_if_its_waiter_left() {
        let now = Instant::now();
        let both = Item { abandoned: true, deadline: Some(now - Duration::from_millis(1)), ..item(0, 1) };
        assert_eq!(batcher(8, vec![both]).next_batch(now, by_tokens).dropped[0].1, Dropped::Expired);
    }

    #[test]
    fn a_deadline_exactly_now_has_passed() {
        let now = Instant::now();
        let mut b = batcher(8, vec![Item { deadline: Some(now), ..item(0, 1) }]);
        let next = b.next_batch(now, by_tokens);
        assert!(next.batch.is_empty());
        assert_eq!(next.dropped[0].1, Dropped::Expired);
    }

    #[test]
    fn a_cost_that_depends_on_the_batch_so_far() {
        // Items of one "prompt" cost 4 for the first and 1 after, as shared prompts do.
        let now = Instant::now();
        let mut b = batcher(8, (0..6).map(|i| item(i, 4)).collect());
        let mut taken = 0;
        let next = b.next_batch(now, |_| {
            taken += 1;
            if taken == 1 {
                4
            } else {
                1
            }
        });
        assert_eq!((ids(&next.batch), next.tokens), (vec![0, 1, 2, 3, 4], 8));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn dropped_requests_behind_the_budget_stay_for_the_next_batch() {
        let now = Instant::now();
        let gone = Item { abandoned: true, ..item(2, 1) };
        let mut b = batcher(5, vec![item(0, 5), item(1, 5), gone]);
        let first = b.next_batch(now, by_tokens);
        assert_eq!((ids(&first.batch), first.dropped.len()), (vec![0], 0));
        let second = b.next_batch(now, by_tokens);
        assert_eq!((ids(&second.batch), second.dropped.len()), (vec![1], 1));
    }
}
