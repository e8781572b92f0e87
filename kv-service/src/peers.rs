//! Instances that share requests must share a store. NATS spreads the requests of one subject
//! over every instance subscribed to it, so two instances on different stores would each
//! answer part of them, and a key written through one would be missing through the other.
//! Every instance advertises its store in its `$SRV.INFO` metadata; before serving, an
//! instance looks at the others on its subjects and refuses to start beside one on a different
//! store, and while serving it keeps looking and logs an error for any that appears.
//!
//! A SQLite store belongs to one process (it holds the file locked), so beside any other
//! instance it is always a conflict; PostgreSQL instances agree when their store ids do, and
//! when they are in one queue group: NATS gives each request to one member of every group, so
//! instances in two groups would each carry out every request.

use std::collections::HashSet;
use std::time::Duration;

use nats_rpc::Instance;

use crate::store::{Backend, Store};

/// The service name every instance registers under.
pub(crate) const SERVICE: &str = "kv-service";
/// Metadata key: the store's identity, made when its database was created.
const STORE_ID: &str = "store_id";
/// Metadata key: `sqlite` or `postgres`.
const STORE_BACKEND: &str = "store_backend";
/// How long to listen for other instances before serving.
const START_WINDOW: Duration = Duration::from_millis(300);
/// How often a serving instance looks again (a conflict is logged within this plus
/// `WATCH_WINDOW` (1 s), under 10 s).
pub const WATCH_EVERY: Duration = Duration::from_secs(5);
const WATCH_WINDOW: Duration = Duration::from_secs(1);

/// What this instance serves, and from which store.
#[derive(Debug, Clone)]
pub(crate) struct Mine {
    store_id: String,
    backend: Backend,
    subjects: Vec<String>,
    queue_group: String,
}

impl Mine {
    pub(crate) fn new(store: &Store, subjects: Vec<String>, queue_group: &str) -> Mine {
        Mine {
            store_id: store.id().to_owned(),
            backend: store.backend(),
            subjects,
            queue_group: queue_group.to_owned(),
        }
    }

    /// The `$SRV.INFO` metadata that tells other instances which store this one serves.
    pub(crate) fn metadata(&self) -> [(&'static str, String); 2] {
        [
            (STORE_ID, self.store_id.clone()),
            (STORE_BACKEND, self.backend.as_str().to_owned()),
        ]
    }

    /// Why `other` must not serve beside this instance, or `None` if it may.
    fn conflict(&self, other: &Instance) -> Option<String> {
        let shared = other
            .endpoints
            .iter()
            .find(|endpoint| self.subjects.contains(&endpoint.subject))?;
        let their_backend = other.metadata.get(STORE_BACKEND).map(String::as_str);
        let theirs = match (their_backend, other.metadata.get(STORE_ID)) {
            (Some("postgres"), Some(id)) => {
                if self.backend == Backend::Postgres && *id == self.store_id {
                    if shared.queue_group == self.queue_group {
                        return None;
                    }
                    return Some(format!(
                        "kv-service instance {} (version {}) already serves {} from this \
                         instance's PostgreSQL store {id}, in queue group `{}`, and this \
                         instance's queue group is `{}`: NATS would give every request to one \
                         instance of each group, so each would be carried out twice (a delete \
                         answered both deleted and not). Start this instance with \
                         QUEUE_GROUP={} (or --queue-group), or stop those instances first",
                        other.id,
                        other.version,
                        shared.subject,
                        shared.queue_group,
                        self.queue_group,
                        shared.queue_group
                    ));
                }
                format!("PostgreSQL store {id}")
            }
            (Some("sqlite"), Some(id)) => format!("SQLite store {id} (a file of its own)"),
            (Some(backend), Some(id)) => format!("{backend} store {id}"),
            _ => "a store it does not name (a kv-service from before store identities)".into(),
        };
        let ours = match self.backend {
            Backend::Postgres => format!("PostgreSQL store {}", self.store_id),
            Backend::Sqlite => format!("SQLite store {} (a file of its own)", self.store_id),
        };
        let fix = if self.backend == Backend::Sqlite || their_backend == Some("sqlite") {
            "A SQLite file serves one instance: to run several, start every instance with the \
             same DATABASE_URL=postgres://… (`kv-service copy` moves the data); otherwise stop \
             the other instance, or serve this one on another NATS server or account"
        } else if their_backend.is_none() {
            "Stop that instance or upgrade it, so that it names its store"
        } else {
            "Start this instance with the DATABASE_URL the running instances use, or stop them \
             first, or serve this one on another NATS server or account"
        };
        Some(format!(
            "kv-service instance {} (version {}) already serves {} (queue group `{}`) from {theirs}, \
             and this instance's store is {ours}: requests would be split between the two stores \
             and a key written through one would be missing through the other. {fix}",
            other.id, other.version, shared.subject, shared.queue_group
        ))
    }
}

/// Fails, saying why and what to do, when an instance on another store already serves one of
/// this instance's subjects.
pub(crate) async fn refuse_conflicts(
    client: &async_nats::Client,
    mine: &Mine,
) -> Result<(), crate::Error> {
    let others = match nats_rpc::discover(client, SERVICE, START_WINDOW).await {
        Ok(others) => others,
        Err(err) => {
            tracing::warn!(%err, "cannot look for other instances; starting anyway");
            return Ok(());
        }
    };
    let mut agreeing = 0;
    for other in &others {
        match mine.conflict(other) {
            Some(reason) => return Err(crate::Error::Conflict(reason)),
            None => agreeing += 1,
        }
    }
    if agreeing > 0 {
        tracing::info!(
            instances = agreeing,
            "joining the instances already serving this store"
        );
    }
    Ok(())
}

/// Looks for conflicting instances every [`WATCH_EVERY`] for as long as it runs, and logs an
/// error, once per instance, for each one found (`own_id`, this instance, is skipped).
pub(crate) async fn watch(client: async_nats::Client, mine: Mine, own_id: String) {
    let mut reported: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(WATCH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let others = match nats_rpc::discover(&client, SERVICE, WATCH_WINDOW).await {
            Ok(others) => others,
            Err(err) => {
                tracing::debug!(%err, "cannot look for other instances");
                continue;
            }
        };
        for other in others {
            if other.id == own_id || reported.contains(&other.id) {
                continue;
            }
            if let Some(reason) = mine.conflict(&other) {
                tracing::error!("conflicting instance: {reason}");
                reported.insert(other.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use nats_rpc::InstanceEndpoint;

    use super::*;

    fn instance(metadata: &[(&str, &str)], subject: &str) -> Instance {
        Instance {
            name: SERVICE.into(),
            id: "OTHER".into(),
            version: "0.1.0".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            endpoints: vec![InstanceEndpoint {
                name: "get".into(),
                subject: subject.into(),
                queue_group: "q".into(),
            }],
        }
    }

    fn mine(backend: Backend, id: &str) -> Mine {
        Mine {
            store_id: id.into(),
            backend,
            subjects: vec!["rosey.db.kv.get".into(), "rosey.db.kv.set".into()],
            queue_group: "q".into(),
        }
    }

    const PG_A: [(&str, &str); 2] = [(STORE_ID, "A"), (STORE_BACKEND, "postgres")];

    #[test]
    fn instances_on_one_postgres_store_agree() {
        let other = instance(&PG_A, "rosey.db.kv.get");
        assert_eq!(mine(Backend::Postgres, "A").conflict(&other), None);
    }

    #[test]
    fn one_postgres_store_in_two_queue_groups_is_a_conflict_naming_the_group() {
        let other = instance(&PG_A, "rosey.db.kv.get");
        let mut me = mine(Backend::Postgres, "A");
        me.queue_group = "other".into();
        let reason = me.conflict(&other).unwrap();
        assert!(
            reason.contains("in queue group `q`")
                && reason.contains("this instance's queue group is `other`")
                && reason.contains("carried out twice")
                && reason.contains("Start this instance with QUEUE_GROUP=q"),
            "{reason}"
        );
    }

    #[test]
    fn another_postgres_store_is_a_conflict_naming_both_and_the_fix() {
        let other = instance(&PG_A, "rosey.db.kv.get");
        let reason = mine(Backend::Postgres, "B").conflict(&other).unwrap();
        assert!(
            reason.contains("instance OTHER")
                && reason.contains("PostgreSQL store A")
                && reason.contains("this instance's store is PostgreSQL store B")
                && reason.contains("rosey.db.kv.get (queue group `q`)")
                && reason.contains("Start this instance with the DATABASE_URL"),
            "{reason}"
        );
    }

    #[test]
    fn sqlite_beside_anything_is_a_conflict() {
        let sqlite = [(STORE_ID, "A"), (STORE_BACKEND, "sqlite")];
        for (me, other) in [
            (
                mine(Backend::Sqlite, "A"),
                instance(&sqlite, "rosey.db.kv.set"),
            ),
            (
                mine(Backend::Sqlite, "A"),
                instance(&PG_A, "rosey.db.kv.set"),
            ),
            (
                mine(Backend::Postgres, "A"),
                instance(&sqlite, "rosey.db.kv.set"),
            ),
        ] {
            let reason = me.conflict(&other).expect("a conflict");
            assert!(
                reason.contains("A SQLite file serves one instance")
                    && reason.contains("DATABASE_URL=postgres://"),
                "{reason}"
            );
        }
    }

    #[test]
    fn an_instance_that_does_not_name_its_store_is_a_conflict() {
        let reason = mine(Backend::Postgres, "A")
            .conflict(&instance(&[], "rosey.db.kv.get"))
            .unwrap();
        assert!(
            reason.contains("a store it does not name")
                && reason.contains("Stop that instance or upgrade it"),
            "{reason}"
        );
    }

    #[test]
    fn instances_on_other_subjects_are_no_concern() {
        let other = instance(&PG_A, "rosey.db.kv.chat.get");
        assert_eq!(mine(Backend::Postgres, "B").conflict(&other), None);
    }
}
