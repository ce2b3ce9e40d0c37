//! Property tests: random sequences of operations through the real store.
//!
//! Properties: the store accepts exactly the transitions the state machine allows (so no illegal
//! one is ever persisted); event seqs are 1..=n with no gap; every machine's record equals the
//! fold of its history; a closure that fails part-way leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;

use berth_store::{Store, StoreError, StoreOptions, TransitionSpec};
use berth_types::state::ALL_STATES;
use berth_types::{EventKind, MachineId, MachineRecord, Source, State};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Transition(usize, State, bool, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..6usize).prop_map(Op::Create),
        4 => (0..6usize, proptest::sample::select(ALL_STATES.to_vec()), any::<bool>(), any::<bool>())
            .prop_map(|(i, s, user, restart)| Op::Transition(i, s, user, restart)),
    ]
}

fn id(i: usize) -> MachineId {
    MachineId::parse(&format!("m{i}")).unwrap()
}

/// Applies `op` to the model; `Err(())` where the store must refuse it.
fn model_apply(model: &mut BTreeMap<usize, State>, op: &Op) -> Result<(), ()> {
    match *op {
        Op::Create(i) => {
            if model.contains_key(&i) {
                return Err(());
            }
            model.insert(i, State::Created);
        }
        Op::Transition(i, to, _, _) => {
            let from = model.get(&i).ok_or(())?;
            if !from.can_transition_to(to) {
                return Err(());
            }
            model.insert(i, to);
        }
    }
    Ok(())
}

fn store_apply(w: &mut berth_store::WriteCtx<'_, '_>, op: &Op) -> berth_store::Result<()> {
    match *op {
        Op::Create(i) => w
            .create_machine(common::record(&format!("m{i}")), Source::User, "prop")
            .map(drop),
        Op::Transition(i, to, user, restart) => {
            let source = if user { Source::User } else { Source::Berth };
            let kind = if restart {
                EventKind::Restart
            } else {
                EventKind::Start
            };
            w.transition(&id(i), TransitionSpec::new(to, kind, source, "prop"))
                .map(drop)
        }
    }
}

fn expected_refusal(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::IllegalTransition { .. }
            | StoreError::NotFound(_)
            | StoreError::AlreadyExists(_)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences(groups in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("berth.redb"), StoreOptions::default()).unwrap();
        let mut model: BTreeMap<usize, State> = BTreeMap::new();
        let mut accepted_events = 0u64;

        for group in groups {
            // A group is one closure: all its ops commit together or none does.
            let mut trial = model.clone();
            let model_ok = group.iter().all(|op| model_apply(&mut trial, op).is_ok());
            let ops = group.clone();
            let result = store.write_blocking(move |w| {
                for op in &ops {
                    store_apply(w, op)?;
                }
                Ok(())
            });
            match result {
                Ok(()) => {
                    prop_assert!(model_ok, "store accepted {group:?}, the state machine forbids it");
                    model = trial;
                    accepted_events += group.len() as u64;
                }
                Err(e) => {
                    prop_assert!(!model_ok, "store refused {group:?}: {e}");
                    prop_assert!(expected_refusal(&e), "unexpected error {e}");
                }
            }
        }

        // Records match the model; events are 1..=n; each record is the fold of its history.
        let records: BTreeMap<String, MachineRecord> =
            store.machines().unwrap().into_iter().map(|r| (r.id.to_string(), r)).collect();
        prop_assert_eq!(records.len(), model.len());
        for (i, state) in &model {
            prop_assert_eq!(records[&format!("m{i}")].state, *state);
        }
        let events = store.events_after(0, usize::MAX).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        prop_assert_eq!(seqs, (1..=accepted_events).collect::<Vec<_>>());
        for rec in records.values() {
            let history = store.history(&rec.id).unwrap();
            let mut folded = rec.clone();
            folded.state = State::Created;
            folded.version = 0;
            folded.pid = None;
            folded.exit = None;
            folded.restarts = 0;
            for ev in &history {
                if let Some(from) = ev.from {
                    prop_assert!(from.can_transition_to(ev.to), "illegal transition persisted: {ev:?}");
                }
                folded.apply(ev);
            }
            prop_assert_eq!(folded.history_view(), rec.history_view());
        }
        let report = store.check().unwrap();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
    }
}
