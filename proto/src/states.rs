//! Names and finality of the proto's state enums, so that every crate shows and waits
//! on them alike: [`LoadState`], [`InstanceState`], [`WorkerState`], [`DatasetPhase`].
//!
//! `name()` is the proto's own value name without its enum prefix (`"SUCCEEDED"`),
//! `label()` the same in lowercase (`"succeeded"`). `UNSPECIFIED` reads as
//! `"UNKNOWN"`/`"unknown"`: a number this build does not know decodes to it too (the
//! generated getters, e.g. `LoadJob::state()`, fall back to it).

use crate::v1::{DatasetPhase, InstanceState, LoadState, WorkerState};

/// `name()` from prost's `as_str_name()`; `label()` from a table that must list every
/// value (no wildcard), so a value added to a `.proto` does not compile until it has one.
/// The unit test below holds each label to its name.
macro_rules! names {
    ($enum:ident, $prefix:literal, { $($variant:ident => $label:literal),+ $(,)? }) => {
        impl $enum {
            #[doc = concat!("The value's name in the `.proto` without `", $prefix, "`; `\"UNKNOWN\"` for `Unspecified`.")]
            pub fn name(self) -> &'static str {
                match self {
                    $enum::Unspecified => "UNKNOWN",
                    _ => {
                        let full = self.as_str_name();
                        full.strip_prefix($prefix).unwrap_or(full)
                    }
                }
            }

            /// [`Self::name`] in lowercase.
            pub fn label(self) -> &'static str {
                match self {
                    $enum::Unspecified => "unknown",
                    $($enum::$variant => $label,)+
                }
            }
        }
    };
}

names!(LoadState, "LOAD_STATE_", {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

names!(InstanceState, "INSTANCE_STATE_", {
    Submitted => "submitted",
    Pending => "pending",
    Runnable => "runnable",
    Starting => "starting",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

names!(WorkerState, "WORKER_STATE_", {
    Live => "live",
    Expired => "expired",
    Left => "left",
});

names!(DatasetPhase, "DATASET_PHASE_", {
    Syncing => "syncing",
    Ready => "ready",
    Failed => "failed",
});

impl LoadState {
    /// The job has ended and will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            LoadState::Succeeded | LoadState::Failed | LoadState::Cancelled
        )
    }
}

impl InstanceState {
    /// The instance (or the job or task, whose states use the same words) has ended and
    /// will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            InstanceState::Succeeded | InstanceState::Failed | InstanceState::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of an enum, by number from 0 until the first unknown one.
    fn values<E: TryFrom<i32>>() -> Vec<E> {
        (0..).map_while(|n| E::try_from(n).ok()).collect()
    }

    /// Each name is the proto's (prefix dropped), each label that name in lowercase.
    fn check<E: Copy>(
        values: &[E],
        prefix: &str,
        full: fn(&E) -> &'static str,
        name: fn(E) -> &'static str,
        label: fn(E) -> &'static str,
    ) -> Vec<&'static str> {
        assert!(values.len() > 1, "{prefix}: no values");
        assert_eq!(full(&values[0]), format!("{prefix}UNSPECIFIED"));
        assert_eq!(name(values[0]), "UNKNOWN");
        for &v in &values[1..] {
            assert_eq!(format!("{prefix}{}", name(v)), full(&v));
        }
        for &v in values {
            assert_eq!(label(v), name(v).to_ascii_lowercase());
        }
        values.iter().map(|&v| label(v)).collect()
    }

    macro_rules! labels {
        ($enum:ident, $prefix:literal) => {
            check(
                &values::<$enum>(),
                $prefix,
                $enum::as_str_name,
                $enum::name,
                $enum::label,
            )
        };
    }

    #[test]
    fn names_are_the_protos_and_labels_their_lowercase() {
        assert_eq!(
            labels!(LoadState, "LOAD_STATE_"),
            [
                "unknown",
                "pending",
                "running",
                "succeeded",
                "failed",
                "cancelled"
            ]
        );
        assert_eq!(labels!(InstanceState, "INSTANCE_STATE_").len(), 9);
        assert_eq!(InstanceState::Runnable.name(), "RUNNABLE");
        assert_eq!(
            labels!(WorkerState, "WORKER_STATE_"),
            ["unknown", "live", "expired", "left"]
        );
        assert_eq!(
            labels!(DatasetPhase, "DATASET_PHASE_"),
            ["unknown", "syncing", "ready", "failed"]
        );
    }

    #[test]
    fn only_succeeded_failed_and_cancelled_are_final() {
        fn finals<E: Copy + TryFrom<i32>>(
            is_final: fn(E) -> bool,
            label: fn(E) -> &'static str,
        ) -> Vec<&'static str> {
            values::<E>()
                .into_iter()
                .filter(|&v| is_final(v))
                .map(label)
                .collect()
        }
        let want = ["succeeded", "failed", "cancelled"];
        assert_eq!(finals(LoadState::is_final, LoadState::label), want);
        assert_eq!(finals(InstanceState::is_final, InstanceState::label), want);
    }

    #[test]
    fn an_unknown_number_reads_as_unknown() {
        let job = crate::v1::LoadJob {
            state: 99,
            ..Default::default()
        };
        assert_eq!(job.state().label(), "unknown");
        assert!(!job.state().is_final());
    }
}
