//! Dispatch: what happens to an event once it is on the bus.
//!
//! Delivery is at least once (EventBridge retries, the outbox re-delivers
//! after a crash), so a run's id is derived from the event and the
//! automation, and the run is created with a conditional write: a second
//! delivery finds it. A finished run is not run again; an unfinished one
//! (a crash, or a vendor that was down) resumes, skipping the steps that
//! already succeeded. Each step's request, outcome and output are saved as
//! they happen.
//!
//! A vendor that stays unavailable after the HTTP stack's retries fails the
//! run *transiently*: dispatch returns an error so the bus delivers the
//! event again later (and, in the end, to the dead-letter queue). Anything
//! that would fail the same way again (a bad template, a refused request)
//! fails the run for good, with the reason recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use crmbridge_connectors::{Action, ActionError, ActionOutput, CallContext, Resend, Sent};
use crmbridge_mapping::{
    CompiledAutomation, DedupeDecision, Event, EventId, FilterOutcome, RenderContext, StepPlan,
};
use crmbridge_store::{PutOutcome, StoreError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;

use crate::alerts::ALERT_DELIVERY;
use crate::bookkeeping::AutomationRecord;
use crate::import::IMPORT_PAGE;
use crate::links::{RecordRef, StoredLinks, linked_by};
use crate::metrics::{Metric, status_class};
use crate::records::{
    ConnectionRecord, ConnectionSecrets, RunLease, RunRecord, RunStatus, RunSummary, StepRecord,
    StepStatus,
};
use crate::sequence::Gate;
use crate::tick::POLL_REQUESTED;
use crate::{Engine, EngineError, EngineResult, item, keys};

/// The run id of an (event, automation) pair: stable across redeliveries.
pub fn run_id(event: &EventId, automation: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(event.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(automation.unwrap_or("").as_bytes());
    format!("run_{}", hex::encode(&hasher.finalize()[..16]))
}

/// What a dispatch did.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatched {
    pub runs: Vec<RunSummary>,
    /// True when every run had already finished (a redelivery).
    pub duplicate: bool,
}

impl Dispatched {
    /// Nothing was run (a bus message that is not an event of a source).
    pub fn nothing() -> Self {
        Self {
            runs: vec![],
            duplicate: false,
        }
    }
}

impl Engine {
    /// Runs every automation the event triggers, once; a chat's message
    /// waits for the one before it (see `sequence`).
    pub async fn dispatch(&self, event: Event) -> EngineResult<Dispatched> {
        let turn = match self.take_turn(&event).await? {
            Gate::Free => None,
            Gate::Go(turn) => Some(turn),
            Gate::Parked => {
                return Ok(Dispatched {
                    runs: vec![],
                    duplicate: false,
                });
            }
        };
        let connection = event.connection.clone();
        let tenant = event.tenant.clone();
        let dispatched = self.with_config(&tenant, self.dispatch_now(event)).await;
        let dispatched = dispatched.and_then(|d| d);
        if let Some(turn) = &turn {
            match &dispatched {
                // Retried by the bus: the chat waits for it.
                Err(err) if is_transient(err) => {}
                _ => self.finish_turn(&connection, turn).await?,
            }
        }
        dispatched
    }

    async fn dispatch_now(&self, event: Event) -> EngineResult<Dispatched> {
        let event = self.resolve_data(event).await?;
        let span = tracing::info_span!(
            "dispatch",
            tenant = %event.tenant,
            connection = %event.connection,
            event_id = %event.id,
            kind = %event.kind
        );
        // Instrumented, not entered: a guard held across an await stays
        // entered on the thread while other tasks run there, and their
        // lines would carry this event's fields.
        self.dispatch_resolved(event).instrument(span).await
    }

    async fn dispatch_resolved(&self, event: Event) -> EngineResult<Dispatched> {
        if event.kind == POLL_REQUESTED {
            return self.poll_requested(&event).await;
        }
        if event.kind == IMPORT_PAGE {
            return self.import_page_requested(&event).await;
        }
        if event.kind == ALERT_DELIVERY {
            return self.deliver_alert(&event).await;
        }
        let automations = self
            .automations_for(&event.tenant, &event.connection, &event.kind)
            .await?;
        if automations.is_empty() {
            return self.record_no_match(event).await;
        }
        let mut event = event;
        self.enrich(&mut event).await?;
        if self.seen_change(&event).await? {
            tracing::info!(
                "the same change already arrived by another path (webhook and poll); skipped"
            );
            return Ok(Dispatched {
                runs: vec![],
                duplicate: true,
            });
        }
        // Trigger options (NetHunt's folder, field and value) narrow the
        // automations of the kind; an event none of them watches is not a
        // run (a status turning Lost when only Won is watched).
        let automations: Vec<AutomationRecord> = match self.event_source(&event.app) {
            Some(connector) => automations
                .into_iter()
                .filter(|r| connector.trigger_matches(&r.automation.trigger.options, &event))
                .collect(),
            None => automations,
        };
        if automations.is_empty() {
            tracing::info!("no automation's trigger options match this event");
            return Ok(Dispatched {
                runs: vec![],
                duplicate: false,
            });
        }
        if let Some(change) = self
            .event_source(&event.app)
            .and_then(|c| c.reported_change(&event))
            && let Some(writer) = self.echo_of(&event, &change).await?
        {
            return self.record_echo(&event, &automations, &writer).await;
        }
        let mut runs = Vec::new();
        let mut duplicate = true;
        let mut transient: Option<EngineError> = None;
        for record in automations {
            match self.run_automation(&event, &record).await {
                Ok((summary, created)) => {
                    duplicate &= !created;
                    runs.push(summary);
                }
                Err(err) => {
                    duplicate = false;
                    transient.get_or_insert(err);
                }
            }
        }
        match transient {
            // Some run must be retried: have the bus deliver again. Runs
            // that finished are not repeated.
            Some(err) => Err(err),
            None => Ok(Dispatched { runs, duplicate }),
        }
    }

    /// The bus gave up on an event (dead letter): every run of it that has
    /// not finished is failed with `reason`, and counts towards halting
    /// its automation. A run the event never got to is recorded as failed,
    /// so it can be replayed like any other.
    pub async fn give_up(&self, event: Event, reason: &str) -> EngineResult<()> {
        if event.kind == POLL_REQUESTED {
            return Ok(());
        }
        if event.kind == IMPORT_PAGE {
            return self.import_given_up(&event, reason).await;
        }
        if event.kind == ALERT_DELIVERY {
            // Not an alert itself: that would feed on its own failure.
            tracing::warn!(tenant = %event.tenant, destination = %event.connection, reason, "an alert could not be delivered; given up");
            return Ok(());
        }
        let automations = self
            .automations_for(&event.tenant, &event.connection, &event.kind)
            .await?;
        let connector = self.event_source(&event.app);
        for record in automations {
            if connector
                .as_ref()
                .is_some_and(|c| !c.trigger_matches(&record.automation.trigger.options, &event))
            {
                continue;
            }
            let id = run_id(&event.id, Some(&record.automation.id));
            let outcome = format!("dead-lettered: {reason}");
            let mut fresh = self.new_run(
                &event,
                Some(&record.automation.id),
                RunStatus::Failed,
                outcome.clone(),
                None,
            );
            fresh.attempts = 0;
            let run = if self.create_run(&fresh).await? {
                self.measure_run(&fresh);
                fresh
            } else {
                let Some((mut run, mut version)) = self.read::<RunRecord>(&keys::run(&id)).await?
                else {
                    continue;
                };
                if run.status.is_final() {
                    continue;
                }
                if run.status == RunStatus::Failed {
                    // Failed on its last delivery: already counted.
                    continue;
                }
                let outcome = format!("{outcome}; last known state: {}", run.outcome);
                match self
                    .finish(&mut run, &mut version, RunStatus::Failed, outcome)
                    .await
                {
                    Ok(()) => {
                        self.measure_run(&run);
                        run
                    }
                    // Someone is running it after all: let them finish.
                    Err(EngineError::Action { .. }) => continue,
                    Err(err) => return Err(err),
                }
            };
            tracing::warn!(tenant = %run.tenant, automation = %record.automation.id, run = %run.id, event_id = %event.id, reason, "run failed: its event was dead-lettered");
            self.note_failure(&record, &run.outcome).await?;
        }
        // Its chat goes on without it.
        if let Some(turn) = self.turn_of(&event).await? {
            self.finish_turn(&event.connection, &turn).await?;
        }
        Ok(())
    }

    /// The event only reports back what a run of ours wrote: each
    /// automation records it as filtered, and nothing is sent back.
    async fn record_echo(
        &self,
        event: &Event,
        automations: &[AutomationRecord],
        writer: &str,
    ) -> EngineResult<Dispatched> {
        let outcome = format!("echo of crmbridge's own write (run {writer}): not sent back");
        let mut runs = Vec::new();
        let mut duplicate = true;
        for record in automations {
            let run = self.new_run(
                event,
                Some(&record.automation.id),
                RunStatus::Filtered,
                outcome.clone(),
                None,
            );
            let created = self.create_run(&run).await?;
            if created {
                self.measure_run(&run);
            }
            duplicate &= !created;
            runs.push(RunSummary::from(&run));
        }
        tracing::info!(writer, "an echo of our own write; no run");
        Ok(Dispatched { runs, duplicate })
    }

    async fn record_no_match(&self, event: Event) -> EngineResult<Dispatched> {
        let outcome = format!(
            "no automation matched {} on connection {}",
            event.kind, event.connection
        );
        let run = self.new_run(&event, None, RunStatus::NoMatch, outcome, None);
        let created = self.create_run(&run).await?;
        if created {
            self.measure_run(&run);
        }
        tracing::info!(run = %run.id, status = ?run.status, created, "dispatched");
        Ok(Dispatched {
            runs: vec![RunSummary::from(&run)],
            duplicate: !created,
        })
    }

    /// Whether this change was already dispatched under another event id:
    /// a source that is both polled and sends webhooks (MoySklad) reports
    /// one change twice, with different ids. The connector's change key
    /// (order id + its `updated` time) is claimed once; a redelivery of the
    /// same event passes (its runs de-duplicate themselves).
    async fn seen_change(&self, event: &Event) -> EngineResult<bool> {
        let Some(change) = self
            .event_source(&event.app)
            .and_then(|c| c.change_key(event))
        else {
            return Ok(false);
        };
        let canonical = EventId::from_source(&event.connection, &change);
        let expires = event.received_at.timestamp() + self.config.idempotency_ttl_secs;
        let claim = item(
            keys::change(canonical.as_str()),
            &json!({"event_id": event.id}),
        )?
        .expiring_at(expires);
        Ok(match self.store.put_if_absent(claim).await? {
            crmbridge_store::PutOutcome::Inserted => false,
            crmbridge_store::PutOutcome::Exists(existing) => {
                existing.body["event_id"].as_str() != Some(event.id.as_str())
            }
        })
    }

    /// Fetches what the event only points at (MoySklad webhooks).
    async fn enrich(&self, event: &mut Event) -> EngineResult<()> {
        let Some(connector) = self.event_source(&event.app) else {
            return Ok(());
        };
        let connection = self
            .open_connection(&event.tenant, &event.connection)
            .await?;
        let key = format!("enrich/{}", event.id);
        let ctx = self.call_context(&connection, &key);
        connector
            .enrich(&ctx, event)
            .await
            .map_err(|err| EngineError::Action {
                what: format!("reading the {} record the event points at", event.app),
                transient: err.is_transient(),
                message: err.to_string(),
            })
    }

    pub fn call_context<'a>(
        &'a self,
        connection: &'a OpenConnection,
        idempotency_key: &'a str,
    ) -> CallContext<'a> {
        CallContext {
            connection: &connection.record.id,
            settings: &connection.record.settings,
            credentials: &connection.secrets.credentials,
            http: &self.http,
            idempotency_key,
            allow_any_base_url: self.config.allow_any_base_url,
            tokens: connection
                .tokens
                .as_ref()
                .map(|t| t as &dyn crmbridge_connectors::oauth::AccessTokens),
        }
    }

    /// A connection with its secrets opened; inside a dispatch, from the
    /// configuration cache (see `config_cache`).
    pub async fn open_connection(
        &self,
        tenant: &str,
        id: &str,
    ) -> EngineResult<Arc<OpenConnection>> {
        let (view, cached) = self.cached_connection(tenant, id);
        if let Some(open) = cached {
            return Ok(open);
        }
        let open = Arc::new(self.read_connection(tenant, id).await?);
        if let Some(view) = view {
            self.keep_connection(&view, id, &open);
        }
        Ok(open)
    }

    async fn read_connection(&self, tenant: &str, id: &str) -> EngineResult<OpenConnection> {
        let record = match self.read::<ConnectionRecord>(&keys::connection(id)).await? {
            Some((record, _)) if record.tenant == tenant => record,
            _ => {
                return Err(EngineError::Action {
                    what: format!("opening connection {id}"),
                    transient: false,
                    message: "the connection no longer exists".into(),
                });
            }
        };
        let secrets = self.open_secrets(&record)?;
        let tokens = self.connection_tokens(&record, &secrets)?;
        Ok(OpenConnection {
            record,
            secrets,
            tokens,
        })
    }

    pub(crate) fn compiled(
        &self,
        record: &AutomationRecord,
    ) -> EngineResult<Arc<CompiledAutomation>> {
        let key = (
            record.tenant.clone(),
            record.automation.id.clone(),
            record.updated_at,
        );
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.get(&key) {
            return Ok(Arc::clone(found));
        }
        let compiled = Arc::new(CompiledAutomation::compile(&record.automation).map_err(
            |errors| {
                EngineError::Invalid(
                    errors
                        .iter()
                        .map(|e| crate::FieldError {
                            field: e.path.clone(),
                            message: e.message.clone(),
                        })
                        .collect(),
                )
            },
        )?);
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&compiled));
        Ok(compiled)
    }

    /// Runs (or resumes) one automation for one event; `true` when this
    /// call created the run. Also the replay of a failed run (crate::runs).
    ///
    /// The run is executed under a lease: the worker that created it, or
    /// took it over from a holder that is gone, is the only one calling
    /// vendors for it. Another delivery of the same event meanwhile backs
    /// off (see [`Taken::Busy`]).
    pub async fn run_automation(
        &self,
        event: &Event,
        record: &AutomationRecord,
    ) -> EngineResult<(RunSummary, bool)> {
        let automation = &record.automation;
        let id = run_id(&event.id, Some(&automation.id));
        let owner = self.lease_owner();
        // A first delivery's run is not written yet: it is stored (created,
        // conditionally) at its first save, which comes before any vendor
        // call, so its claim carries the first call's intent, or the run's
        // end when it makes no call. If that save finds the run created by
        // another delivery, this one takes the stored run instead.
        let mut fresh = Some(self.new_run(
            event,
            Some(&automation.id),
            RunStatus::Running,
            "running".into(),
            Some(self.lease(&owner)),
        ));
        loop {
            let (mut run, mut version) = match fresh.take() {
                Some(run) => (run, 0),
                None => match self.take_run(&id, event, &owner).await? {
                    Taken::Mine(run, version) => (run, version),
                    Taken::Finished(run) => return Ok((RunSummary::from(&run), false)),
                    Taken::Busy(run) => {
                        tracing::info!(run = %id, "another worker holds this run; backing off");
                        if self.config.sole_worker {
                            // The holder is in this process and its delivery
                            // is still outstanding: it finishes the run.
                            return Ok((RunSummary::from(&run), false));
                        }
                        // Elsewhere it may die with its container: have the
                        // bus come back after the lease has had time to lapse.
                        return Err(EngineError::Action {
                            what: format!("run {id}"),
                            transient: true,
                            message: "another worker is running it; retrying later".into(),
                        });
                    }
                },
            };
            let first = version == 0;
            match self.take_on(&mut run, &mut version, record).await {
                Err(EngineError::RunCreatedElsewhere(_)) if first => continue,
                // Created by this call once its first save went through.
                outcome => return outcome.map(|summary| (summary, first && version > 0)),
            }
        }
    }

    /// Runs a run this worker holds (fresh, or taken over) to its end or
    /// to a stop.
    async fn take_on(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        record: &AutomationRecord,
    ) -> EngineResult<RunSummary> {
        let used = run.attempts.saturating_sub(run.attempts_before_replay);
        if used > self.config.max_run_attempts {
            let outcome = format!(
                "given up after {} deliveries (the worker stopped each time); last known state: {}",
                used - 1,
                run.outcome
            );
            self.finish(run, version, RunStatus::Failed, outcome)
                .await?;
            self.measure_run(run);
            self.track_outcome(record, run).await?;
            return Ok(RunSummary::from(&*run));
        }
        if let Some(reason) = &record.halted {
            let outcome = format!(
                "not run: the automation is halted ({reason}); enable it, then replay this run"
            );
            self.finish(run, version, RunStatus::Failed, outcome)
                .await?;
            self.measure_run(run);
            return Ok(RunSummary::from(&*run));
        }
        match self.execute_run(run, version, record).await {
            Ok(()) => {
                self.measure_run(run);
                self.track_outcome(record, run).await?;
                Ok(RunSummary::from(&*run))
            }
            Err(err) if used >= self.config.max_run_attempts && is_transient(&err) => {
                // A step whose arrival could never be read back: a person
                // looks (it may have arrived), rather than a plain failure.
                if let Some(step) = run
                    .steps
                    .iter()
                    .find(|s| s.status == StepStatus::Calling)
                    .cloned()
                {
                    self.needs_review(
                        run,
                        version,
                        &step.id,
                        &step.action,
                        step.request,
                        step.attempts,
                        Some(format!("and reading it back did not settle it: {err}")),
                    )
                    .await?;
                    self.measure_run(run);
                    self.track_outcome(record, run).await?;
                    return Ok(RunSummary::from(&*run));
                }
                // The last delivery the bus will make: the run is failed
                // for good (replayable), and counts towards halting.
                tracing::warn!(run = %run.id, attempts = used, error = %err, "giving up on a run that keeps failing");
                self.measure_run(run);
                self.track_outcome(record, run).await?;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// A run of `event` (by `automation`, or of no automation), first
    /// attempt, as it is created. Its `created_at` is its event's arrival:
    /// the same for every delivery of the event, so each one that builds
    /// this run (a redelivery, a replay, a give-up) names the same index
    /// entries, and writing them again overwrites instead of adding.
    fn new_run(
        &self,
        event: &Event,
        automation: Option<&str>,
        status: RunStatus,
        outcome: String,
        lease: Option<RunLease>,
    ) -> RunRecord {
        let now = self.now();
        RunRecord {
            id: run_id(&event.id, automation),
            tenant: event.tenant.clone(),
            connection: event.connection.clone(),
            automation: automation.map(str::to_owned),
            event_id: event.id.to_string(),
            event_kind: event.kind.clone(),
            status,
            outcome,
            event: event.clone(),
            steps: Vec::new(),
            attempts: 1,
            attempts_before_replay: 0,
            lease,
            created_at: event.received_at,
            updated_at: now,
        }
    }

    fn lease(&self, owner: &str) -> RunLease {
        RunLease {
            owner: owner.to_owned(),
            until: self.now() + chrono::Duration::seconds(self.config.run_lease_secs),
        }
    }

    /// Takes an existing run for `owner`: counts the attempt and renews the
    /// lease in one conditional write, so of several deliveries at once
    /// exactly one gets it.
    async fn take_run(&self, id: &str, event: &Event, owner: &str) -> EngineResult<Taken> {
        loop {
            let Some((mut run, version)) = self.read::<RunRecord>(&keys::run(id)).await? else {
                return Err(EngineError::Action {
                    what: format!("run {id}"),
                    transient: true,
                    message: "the run expired while it was being taken".into(),
                });
            };
            if run.status.is_final() {
                return Ok(Taken::Finished(run));
            }
            if let Some(lease) = &run.lease
                && lease.owner != owner
                && lease.until > self.now()
                && self.holder_may_live(&lease.owner)
            {
                return Ok(Taken::Busy(run));
            }
            run.attempts += 1;
            run.lease = Some(self.lease(owner));
            run.status = RunStatus::Running;
            run.event = event.clone();
            let mut next = version;
            match self.save_run(&mut run, &mut next).await {
                Ok(()) => return Ok(Taken::Mine(run, next)),
                // Another delivery took it between our read and write:
                // look again (it is now busy, or finished).
                Err(EngineError::Action {
                    transient: true, ..
                }) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Keeps the automation's failure streak: a run that failed for good
    /// adds to it (and halts the automation at its threshold), a success
    /// clears it along with any health mark.
    async fn track_outcome(&self, record: &AutomationRecord, run: &RunRecord) -> EngineResult<()> {
        match run.status {
            RunStatus::Failed => self.note_failure(record, &run.outcome).await,
            RunStatus::Succeeded if record.health.is_some() || record.failure_streak > 0 => {
                self.clear_failures(&record.tenant, &record.automation.id)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Saves a run (its progress, a takeover or its end): one conditional
    /// write of the run item on the version this worker last saw. Its index
    /// entries never change after creation, so nothing else is written.
    ///
    /// Version 0 is a fresh run not stored yet: this save creates it, with
    /// its index entries, or finds it created by another delivery
    /// ([`EngineError::RunCreatedElsewhere`]).
    async fn save_run(&self, run: &mut RunRecord, version: &mut u64) -> EngineResult<()> {
        run.updated_at = self.now();
        // Every save renews the lease: a live worker keeps its run.
        run.lease = run.lease.take().map(|lease| self.lease(&lease.owner));
        if *version == 0 {
            return if self.create_run(run).await? {
                *version = 1;
                Ok(())
            } else {
                Err(EngineError::RunCreatedElsewhere(run.id.clone()))
            };
        }
        let expires = run.created_at.timestamp() + self.config.run_ttl_secs;
        let item = item(keys::run(&run.id), run)?.expiring_at(expires);
        match self.store.update_if_version(item, *version).await {
            Ok(next) => {
                *version = next;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Err(EngineError::Action {
                what: format!("saving run {}", run.id),
                transient: true,
                message: "another worker took the run over (this worker's lease lapsed)".into(),
            }),
            Err(err) => Err(err.into()),
        }
    }

    async fn execute_run(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        record: &AutomationRecord,
    ) -> EngineResult<()> {
        let compiled = match self.compiled(record) {
            Ok(compiled) => compiled,
            Err(err) => {
                return self
                    .finish(
                        run,
                        version,
                        RunStatus::Failed,
                        format!("the automation does not compile: {err}"),
                    )
                    .await;
            }
        };
        let event = run.event.clone();
        // Connections used by the automation, opened once per run.
        let mut connections: BTreeMap<String, Arc<OpenConnection>> = BTreeMap::new();
        let mut settings: BTreeMap<String, Value> = BTreeMap::new();
        let mut ids: Vec<&str> = vec![record.automation.trigger.connection.as_str()];
        ids.extend(
            record
                .automation
                .steps
                .iter()
                .map(|s| s.connection.as_str()),
        );
        for id in ids {
            if connections.contains_key(id) {
                continue;
            }
            match self.open_connection(&run.tenant, id).await {
                Ok(open) => {
                    settings.insert(id.to_owned(), open.record.settings.clone());
                    connections.insert(id.to_owned(), open);
                }
                Err(err) => {
                    let message = err.to_string();
                    self.set_health(
                        &record.tenant,
                        &record.automation.id,
                        Some(format!("connection {id} is missing")),
                    )
                    .await?;
                    return self.finish(run, version, RunStatus::Failed, message).await;
                }
            }
        }
        // Linked so far, and by this run's steps done before a restart
        // (linked only when it finishes). An automation that uses no links
        // makes none either: it need not read them.
        let stored = if compiled.reads_links() {
            Some(self.links_of(&RecordRef::subject_of(&event)).await?)
        } else {
            None
        };
        let links: BTreeMap<String, String> = stored
            .iter()
            .flat_map(|stored| &stored.set)
            .map(|(name, r)| (name.clone(), r.id.clone()))
            .chain(linked_by(run).into_iter().map(|(name, r)| (name, r.id)))
            .collect();
        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        for step in &run.steps {
            if step.status.is_done() {
                outputs.insert(step.id.clone(), step.output.clone());
            }
        }
        let now = self.now();
        {
            let ctx = RenderContext::new(&event, now)
                .with_links(&links)
                .with_connections(&settings);
            match compiled.evaluate_filter(&ctx) {
                Ok(FilterOutcome::Passed) => {}
                Ok(FilterOutcome::Filtered { reason }) => {
                    return self
                        .finish(
                            run,
                            version,
                            RunStatus::Filtered,
                            format!("filtered: {reason}"),
                        )
                        .await;
                }
                Err(err) => {
                    return self
                        .finish(
                            run,
                            version,
                            RunStatus::Failed,
                            format!("{}: {}", err.path, err.message),
                        )
                        .await;
                }
            }
        }
        let mut scope = RunScope {
            event,
            connections,
            settings,
            links,
            outputs,
            now,
        };
        for index in 0..compiled.step_count() {
            match self
                .run_step(run, version, record, &compiled, &mut scope, index)
                .await?
            {
                StepFlow::Next => {}
                StepFlow::Stop => return Ok(()),
            }
        }
        let done = run
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .count();
        self.finish_linking(
            run,
            version,
            (RunStatus::Succeeded, format!("{done} step(s) succeeded")),
            stored,
        )
        .await
    }

    /// Runs step `index` of a run: renders it, resumes or refuses an
    /// attempt whose outcome is unknown, saves the intent where a resend
    /// would be unsafe, calls the vendor and records what came back.
    async fn run_step(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        record: &AutomationRecord,
        compiled: &CompiledAutomation,
        scope: &mut RunScope,
        index: usize,
    ) -> EngineResult<StepFlow> {
        let RunScope {
            event,
            connections,
            settings,
            links,
            outputs,
            now,
        } = scope;
        let (event, connections, settings, now) = (&*event, &*connections, &*settings, *now);
        let step_id = record.automation.steps[index].id.clone();
        if outputs.contains_key(&step_id) {
            return Ok(StepFlow::Next);
        }
        let plan = {
            let ctx = RenderContext::new(event, now)
                .with_steps(outputs)
                .with_links(links)
                .with_connections(settings);
            compiled.render_step(index, &ctx)
        };
        let request = match plan {
            Err(err) => {
                let message = format!("{}: {}", err.path, err.message);
                self.put_step(
                    run,
                    StepRecord {
                        id: step_id,
                        action: record.automation.steps[index].action.clone(),
                        status: StepStatus::Failed,
                        request: Value::Null,
                        response_status: None,
                        error: Some(message.clone()),
                        output: Value::Null,
                        attempts: 1,
                        started_at: None,
                    },
                );
                return self
                    .finish(run, version, RunStatus::Failed, message)
                    .await
                    .map(|()| StepFlow::Stop);
            }
            Ok(StepPlan::Skip { reason }) => {
                self.put_step(
                    run,
                    StepRecord {
                        id: step_id.clone(),
                        action: record.automation.steps[index].action.clone(),
                        status: StepStatus::Skipped,
                        request: Value::Null,
                        response_status: None,
                        error: Some(reason),
                        output: json!({}),
                        attempts: 0,
                        started_at: None,
                    },
                );
                outputs.insert(step_id, json!({}));
                self.save_run(run, version).await?;
                return Ok(StepFlow::Next);
            }
            Ok(StepPlan::Call(request)) => request,
        };
        let Some(connection) = connections.get(&request.connection) else {
            return self
                .finish(
                    run,
                    version,
                    RunStatus::Failed,
                    format!(
                        "steps[{index}]: connection {} is not open",
                        request.connection
                    ),
                )
                .await
                .map(|()| StepFlow::Stop);
        };
        let app = request.action.split('.').next().unwrap_or_default();
        let Some(action) = self.connectors.action(&request.action).cloned() else {
            return self
                .finish(
                    run,
                    version,
                    RunStatus::Failed,
                    format!("steps[{index}]: {app} has no action {}", request.action),
                )
                .await
                .map(|()| StepFlow::Stop);
        };
        let key = format!("{}/{}", run.id, step_id);
        let ctx = self.call_context(connection, &key);
        let request_json = serde_json::to_value(&request).unwrap_or_default();
        let previous = run.steps.iter().find(|s| s.id == step_id).cloned();
        let previous_attempts = previous.as_ref().map_or(0, |s| s.attempts);
        let resend_safe = may_resend(action.as_ref(), &request);
        let read_back = !resend_safe && action.resend(&request.fields) == Resend::ReadBack;
        let mut recovered = None;
        if let Some(earlier) = previous
            .as_ref()
            .filter(|s| s.status == StepStatus::Calling)
        {
            // `Some(cause)`: a person must look (`None`: the worker died).
            let review: Option<Option<String>> = if read_back {
                let since = earlier.started_at.unwrap_or(run.created_at);
                match action.find_sent(&ctx, &request.fields, since).await {
                    Ok(Sent::Found(output)) => {
                        tracing::info!(run = %run.id, step = %step_id, "the earlier attempt arrived: read back, not sent again");
                        recovered = Some(output);
                        None
                    }
                    Ok(Sent::NotSent) => {
                        tracing::info!(run = %run.id, step = %step_id, "the earlier attempt did not arrive: sending again");
                        None
                    }
                    Ok(Sent::Unknown(reason)) => {
                        return self
                            .await_read_back(run, version, earlier.clone(), reason)
                            .await;
                    }
                    Err(err) if err.is_transient() => {
                        return self
                            .await_read_back(run, version, earlier.clone(), err.to_string())
                            .await;
                    }
                    Err(err) => {
                        self.note_refusal(&run.tenant, &request.connection, &err)
                            .await?;
                        Some(Some(format!("and reading it back failed: {err}")))
                    }
                }
            } else if !resend_safe {
                Some(None)
            } else {
                tracing::info!(run = %run.id, step = %step_id, "sending again a step whose earlier attempt has an unknown outcome; the vendor de-duplicates it");
                None
            };
            if let Some(cause) = review {
                return self
                    .needs_review(
                        run,
                        version,
                        &step_id,
                        &request.action,
                        request_json,
                        previous_attempts,
                        cause,
                    )
                    .await
                    .map(|()| StepFlow::Stop);
            }
        }
        // A resend keeps the first attempt's start: that attempt may still
        // surface later, and a later read-back must look back that far.
        let started_at = previous
            .as_ref()
            .filter(|s| s.status == StepStatus::Calling)
            .and_then(|s| s.started_at)
            .unwrap_or_else(|| self.now());
        if let Some(output) = recovered {
            let attempt = Attempt {
                step_id,
                request,
                request_json,
                previous_attempts,
                resend_safe,
                read_back,
                started_at,
            };
            return self
                .settle_step(
                    run,
                    version,
                    record,
                    (links, outputs),
                    attempt,
                    Ok(StepOutcome::Done(output)),
                )
                .await;
        }
        // The intent is saved before the call: if this worker dies
        // during it, the next attempt knows the vendor may have acted.
        // A step that may be sent again anyway needs no such trace (it
        // would cost a write per step for nothing): the lease alone
        // keeps two workers from sending it at once.
        if !resend_safe {
            self.put_step(
                run,
                StepRecord {
                    id: step_id.clone(),
                    action: request.action.clone(),
                    status: StepStatus::Calling,
                    request: request_json.clone(),
                    response_status: None,
                    error: None,
                    output: Value::Null,
                    attempts: previous_attempts + 1,
                    started_at: Some(started_at),
                },
            );
            self.save_run(run, version).await?;
        } else if *version == 0 {
            // No vendor call before the run is claimed.
            self.save_run(run, version).await?;
        }
        // An update known in advance is remembered before it is sent: the
        // vendor's report of it may arrive before its answer is read.
        let intended = request
            .target
            .as_ref()
            .and_then(|target| action.will_write(&request.fields, &target.id));
        if let Some(written) = &intended {
            self.remember_write(&request.connection, written, &run.id)
                .await?;
        }
        let outcome = perform(self, action.as_ref(), &ctx, &request).await;
        self.measure_call(&run.tenant, app, &outcome);
        match (&outcome, &intended) {
            // Only what reached the vendor (a record found by dedupe and
            // used unchanged was not written).
            (Ok(StepOutcome::Done(output)), None) if output.attempts > 0 => {
                if let Some(written) = action.written(&request.fields, output) {
                    self.remember_write(&request.connection, &written, &run.id)
                        .await?;
                }
            }
            // The answer names the version the write made: that decides
            // from now on (no value left to be mistaken later).
            (Ok(StepOutcome::Done(output)), Some(intended)) if output.attempts > 0 => {
                if let Some(version) = action
                    .written(&request.fields, output)
                    .and_then(|written| written.version)
                {
                    self.settle_write(&request.connection, intended, version)
                        .await?;
                }
            }
            // Refused, or never sent: no report will come. A call whose
            // outcome is unknown may have changed the record: kept.
            (Err(err), Some(_)) if outcome_unknown(err) => {}
            (_, Some(written)) => {
                self.forget_write(&request.connection, written).await?;
            }
            (_, None) => {}
        }
        let attempt = Attempt {
            step_id,
            request,
            request_json,
            previous_attempts,
            resend_safe,
            read_back,
            started_at,
        };
        self.settle_step(run, version, record, (links, outputs), attempt, outcome)
            .await
    }

    /// Records how a step's call ended: its output (and link) on success,
    /// the run finished otherwise — stopped, skipped, held for review when
    /// the vendor may have acted and a resend is unsafe, or failed (an
    /// error when the failure is transient, so the run is retried).
    async fn settle_step(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        record: &AutomationRecord,
        (links, outputs): (&mut BTreeMap<String, String>, &mut BTreeMap<String, Value>),
        attempt: Attempt,
        outcome: Result<StepOutcome, ActionError>,
    ) -> EngineResult<StepFlow> {
        let Attempt {
            step_id,
            request,
            request_json,
            previous_attempts,
            resend_safe,
            read_back,
            started_at,
        } = attempt;
        match outcome {
            Ok(StepOutcome::Done(output)) => {
                // Stored when the run finishes (see `links`).
                if let Some(name) = &request.link {
                    links.insert(name.clone(), output.id.clone());
                }
                let mut record_output = output.record.clone();
                if let Value::Object(map) = &mut record_output {
                    map.insert("id".into(), Value::String(output.id.clone()));
                } else {
                    record_output = json!({"id": output.id});
                }
                self.put_step(
                    run,
                    StepRecord {
                        id: step_id.clone(),
                        action: request.action.clone(),
                        status: StepStatus::Succeeded,
                        request: request_json,
                        response_status: Some(output.response_status),
                        error: None,
                        output: record_output.clone(),
                        attempts: previous_attempts + output.attempts,
                        started_at: None,
                    },
                );
                let last = record
                    .automation
                    .step_index(&step_id)
                    .is_some_and(|index| index + 1 == record.automation.steps.len());
                outputs.insert(step_id, record_output);
                // The last step's success is saved with the run's finish, a
                // moment later: one write fewer. A crash in between leaves
                // the step as a crash just before this save would (its
                // `calling` mark, or nothing), so nothing new can happen.
                if !last {
                    self.save_run(run, version).await?;
                }
            }
            Ok(StepOutcome::Stopped(reason)) => {
                self.put_step(
                    run,
                    StepRecord {
                        id: step_id,
                        action: request.action.clone(),
                        status: StepStatus::Stopped,
                        request: request_json,
                        response_status: None,
                        error: Some(reason.clone()),
                        output: Value::Null,
                        attempts: previous_attempts,
                        started_at: None,
                    },
                );
                return self
                    .finish(
                        run,
                        version,
                        RunStatus::Filtered,
                        format!("stopped: {reason}"),
                    )
                    .await
                    .map(|()| StepFlow::Stop);
            }
            Err(ActionError::Skipped { reason, health }) => {
                self.put_step(
                    run,
                    StepRecord {
                        id: step_id,
                        action: request.action.clone(),
                        status: StepStatus::Skipped,
                        request: request_json,
                        response_status: None,
                        error: Some(reason.clone()),
                        output: Value::Null,
                        attempts: previous_attempts + 1,
                        started_at: None,
                    },
                );
                self.set_health(&record.tenant, &record.automation.id, Some(health))
                    .await?;
                return self
                    .finish(
                        run,
                        version,
                        RunStatus::Skipped,
                        format!("skipped: {reason}"),
                    )
                    .await
                    .map(|()| StepFlow::Stop);
            }
            // Read back on the next try whether it arrived.
            Err(err) if outcome_unknown(&err) && read_back => {
                let calling = StepRecord {
                    id: step_id,
                    action: request.action.clone(),
                    status: StepStatus::Calling,
                    request: request_json,
                    response_status: vendor_status(&err),
                    error: None,
                    output: Value::Null,
                    attempts: previous_attempts + 1,
                    started_at: Some(started_at),
                };
                return self
                    .await_read_back(run, version, calling, format!("no answer came ({err})"))
                    .await;
            }
            Err(err) if outcome_unknown(&err) && !resend_safe => {
                return self
                    .needs_review(
                        run,
                        version,
                        &step_id,
                        &request.action,
                        request_json,
                        previous_attempts + 1,
                        Some(err.to_string()),
                    )
                    .await
                    .map(|()| StepFlow::Stop);
            }
            Err(err) => {
                let transient = err.is_transient();
                let message = err.to_string();
                self.put_step(
                    run,
                    StepRecord {
                        id: step_id.clone(),
                        action: request.action.clone(),
                        status: StepStatus::Failed,
                        request: request_json,
                        response_status: vendor_status(&err),
                        error: Some(message.clone()),
                        output: Value::Null,
                        attempts: previous_attempts + 1,
                        started_at: None,
                    },
                );
                self.note_refusal(&run.tenant, &request.connection, &err)
                    .await?;
                let outcome = format!("steps.{step_id}: {message}");
                self.finish(run, version, RunStatus::Failed, outcome.clone())
                    .await?;
                if transient {
                    return Err(EngineError::Action {
                        what: format!("run {}", run.id),
                        transient: true,
                        message: outcome,
                    });
                }
                return Ok(StepFlow::Stop);
            }
        }
        Ok(StepFlow::Next)
    }

    /// Leaves a step whose call may have reached the vendor as `calling`
    /// and fails the run transiently: the retry reads the vendor's
    /// history back ([`Action::find_sent`]) before it sends anything.
    async fn await_read_back(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        calling: StepRecord,
        cause: String,
    ) -> EngineResult<StepFlow> {
        let message = format!(
            "steps.{}: {cause}; whether it arrived is read back before it is sent again",
            calling.id
        );
        tracing::warn!(run = %run.id, step = %calling.id, "outcome unknown: read back on the next try");
        self.put_step(
            run,
            StepRecord {
                error: Some(message.clone()),
                ..calling
            },
        );
        self.finish(run, version, RunStatus::Failed, message.clone())
            .await?;
        Err(EngineError::Action {
            what: format!("run {}", run.id),
            transient: true,
            message,
        })
    }

    /// Stops a run at a step that may have reached the vendor and cannot
    /// be sent again safely: a person looks, then replays or leaves it.
    #[allow(clippy::too_many_arguments)]
    async fn needs_review(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        step_id: &str,
        action: &str,
        request: Value,
        attempts: u32,
        error: Option<String>,
    ) -> EngineResult<()> {
        let cause = error.map_or_else(
            || "the worker stopped while the request was on its way".to_owned(),
            |e| format!("no answer came ({e})"),
        );
        let message = format!(
            "the vendor may have done {action} already: {cause}; {action} has no key the vendor de-duplicates on, so sending it again could make a second record. Check the target, then replay the run to send it again"
        );
        tracing::warn!(run = %run.id, step = step_id, action, "step needs review: outcome unknown and not safe to resend");
        self.put_step(
            run,
            StepRecord {
                id: step_id.to_owned(),
                action: action.to_owned(),
                status: StepStatus::NeedsReview,
                request,
                response_status: None,
                error: Some(message.clone()),
                output: Value::Null,
                attempts,
                started_at: None,
            },
        );
        self.finish(
            run,
            version,
            RunStatus::NeedsReview,
            format!("needs review: steps.{step_id}: {message}"),
        )
        .await
    }

    fn put_step(&self, run: &mut RunRecord, step: StepRecord) {
        match run.steps.iter_mut().find(|s| s.id == step.id) {
            Some(existing) => *existing = step,
            None => run.steps.push(step),
        }
    }

    async fn finish(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        status: RunStatus,
        outcome: String,
    ) -> EngineResult<()> {
        self.finish_linking(run, version, (status, outcome), None)
            .await
    }

    /// Finishes a run whose start read the subject's links (`read`), so
    /// linking what it made does not read them again.
    async fn finish_linking(
        &self,
        run: &mut RunRecord,
        version: &mut u64,
        (status, outcome): (RunStatus, String),
        read: Option<StoredLinks>,
    ) -> EngineResult<()> {
        // Before the run's last save: a crash in between leaves the run
        // unfinished, and whoever finishes it links again (nothing new).
        self.link_group(
            &RecordRef::subject_of(&run.event),
            &run.event.subject.kind,
            &linked_by(run),
            read,
        )
        .await?;
        run.status = status;
        run.outcome = outcome;
        run.lease = None;
        self.save_run(run, version).await?;
        tracing::info!(run = %run.id, automation = ?run.automation, status = ?run.status, outcome = %run.outcome, "run finished");
        Ok(())
    }

    /// Counts a step's vendor call by its answer's class (nothing when the
    /// step made no call: a record found by dedupe and used as it was).
    fn measure_call(&self, tenant: &str, vendor: &str, outcome: &Result<StepOutcome, ActionError>) {
        let (status, calls) = match outcome {
            Ok(StepOutcome::Done(output)) if output.attempts > 0 => {
                (Some(output.response_status), output.attempts)
            }
            Ok(_) => return,
            Err(ActionError::Vendor(crmbridge_connectors::VendorError::Invalid(_))) => return,
            // Our own store, not the vendor.
            Err(ActionError::Vendor(crmbridge_connectors::VendorError::Unreachable {
                vendor: "store" | "crmbridge",
                ..
            })) => return,
            Err(ActionError::Vendor(err)) => (vendor_status_of(err), attempts_of(err)),
            Err(_) => return,
        };
        self.measure(
            Metric::VendorCalls,
            &[tenant, vendor, status_class(status)],
            f64::from(calls),
        );
    }

    /// Counts a run that ended (or stopped for now), and how long its
    /// event took from arrival.
    fn measure_run(&self, run: &RunRecord) {
        // CloudWatch refuses empty dimension values.
        let automation = run.automation.as_deref().unwrap_or("-");
        self.measure(
            Metric::Runs,
            &[&run.tenant, automation, run.status.as_str()],
            1.0,
        );
        let waited = (self.now() - run.event.received_at)
            .num_milliseconds()
            .max(0);
        self.measure(
            Metric::DispatchLatency,
            &[&run.tenant, automation],
            waited as f64,
        );
    }

    /// Creates a run after its index entry; `false` if the run existed.
    ///
    /// Not one transaction (that would bill every item twice on DynamoDB):
    /// the entry goes first ([`Store::put_then_insert`]: one write on
    /// SQLite), so a run is never stored unlisted, and the
    /// run's conditional insert decides. A delivery that loses the insert
    /// wrote the same entry again (same key: see [`Engine::new_run`]);
    /// a worker that dies in between leaves an entry whose run does not
    /// exist yet, which listings skip (see [`Engine::runs_of_entries`]).
    pub(crate) async fn create_run(&self, run: &RunRecord) -> EngineResult<bool> {
        let expires = run.created_at.timestamp() + self.config.run_ttl_secs;
        Ok(matches!(
            self.store
                .put_then_insert(
                    crate::bookkeeping::index_item(run, expires)?,
                    item(keys::run(&run.id), run)?.expiring_at(expires),
                )
                .await?,
            PutOutcome::Inserted
        ))
    }
}

/// What [`Engine::take_run`] found.
enum Taken {
    /// Ours now, at this version.
    Mine(RunRecord, u64),
    /// Finished earlier: nothing to do.
    Finished(RunRecord),
    /// Another worker's lease is live.
    Busy(RunRecord),
}

fn is_transient(err: &EngineError) -> bool {
    matches!(
        err,
        EngineError::Action {
            transient: true,
            ..
        }
    ) || matches!(err, EngineError::Store(_) | EngineError::Bus(_))
}

/// Whether a failed call may still have been acted on by the vendor: no
/// answer came, or a 5xx (a server error says nothing about what was
/// committed before it).
fn outcome_unknown(err: &ActionError) -> bool {
    match err {
        ActionError::Vendor(crmbridge_connectors::VendorError::Unreachable { vendor, .. }) => {
            // Our own store and dedupe claims are not the vendor.
            !matches!(*vendor, "store" | "crmbridge")
        }
        ActionError::Vendor(crmbridge_connectors::VendorError::Status { status, .. }) => {
            *status >= 500
        }
        _ => false,
    }
}

/// Whether a step whose earlier attempt has an unknown outcome may be sent
/// again: the connector says the action is repeatable or keyed, or the
/// step first searches the target by its dedupe keys (the search finds
/// what the lost attempt made).
fn may_resend(action: &dyn Action, request: &crmbridge_mapping::RenderedRequest) -> bool {
    if matches!(
        action.resend(&request.fields),
        Resend::Repeatable | Resend::Keyed
    ) {
        return true;
    }
    request.target.is_none()
        && request.dedupe.needs_search()
        && !dedupe_claims(&request.connection, &request.action, &request.dedupe.lookup).is_empty()
}

/// A connection opened for a run (record + decrypted secrets).
pub struct OpenConnection {
    pub record: ConnectionRecord,
    pub secrets: ConnectionSecrets,
    /// Access tokens, for a connection of an OAuth vendor.
    pub(crate) tokens: Option<crate::oauth::ConnectionTokens>,
}

/// What the steps of one run share: the event, the connections opened
/// once, the records linked to the event's subject, the outputs so far.
struct RunScope {
    event: Event,
    connections: BTreeMap<String, Arc<OpenConnection>>,
    settings: BTreeMap<String, Value>,
    links: BTreeMap<String, String>,
    outputs: BTreeMap<String, Value>,
    now: chrono::DateTime<chrono::Utc>,
}

/// One call of a step, as rendered and as far as it went before.
struct Attempt {
    step_id: String,
    request: crmbridge_mapping::RenderedRequest,
    request_json: Value,
    previous_attempts: u32,
    resend_safe: bool,
    /// An unknown outcome is read back, not reviewed.
    read_back: bool,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// Whether the run goes on after a step.
enum StepFlow {
    Next,
    /// The run was finished (or stopped for review) by the step.
    Stop,
}

enum StepOutcome {
    Done(ActionOutput),
    Stopped(String),
}

/// How many calls a failed vendor request made.
fn attempts_of(err: &crmbridge_connectors::VendorError) -> u32 {
    match err {
        crmbridge_connectors::VendorError::Status { attempts, .. }
        | crmbridge_connectors::VendorError::Unreachable { attempts, .. } => (*attempts).max(1),
        _ => 1,
    }
}

/// The status a vendor answered with, if it answered.
fn vendor_status_of(err: &crmbridge_connectors::VendorError) -> Option<u16> {
    match err {
        crmbridge_connectors::VendorError::Status { status, .. }
        | crmbridge_connectors::VendorError::Rejected { status, .. }
        | crmbridge_connectors::VendorError::CredentialsRefused { status, .. }
        | crmbridge_connectors::VendorError::Decode { status, .. } => Some(*status),
        _ => None,
    }
}

fn vendor_status(err: &ActionError) -> Option<u16> {
    match err {
        ActionError::Vendor(err) => vendor_status_of(err),
        _ => None,
    }
}

/// Dedupe, then the action.
async fn perform(
    engine: &Engine,
    action: &dyn Action,
    ctx: &CallContext<'_>,
    request: &crmbridge_mapping::RenderedRequest,
) -> Result<StepOutcome, ActionError> {
    if let Some(target) = &request.target {
        return action
            .execute(ctx, &request.fields, Some(&target.id))
            .await
            .map(StepOutcome::Done);
    }
    if !request.dedupe.needs_search() {
        return decide_and_act(action, ctx, request, None).await;
    }
    // Two runs about the same phone may race: both search, both find
    // nothing, both create. A claim per dedupe key in the store makes one
    // of them the creator; the other waits for the creator's id.
    let claims = dedupe_claims(&request.connection, &request.action, &request.dedupe.lookup);
    let owner = ctx.idempotency_key.to_owned();
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        match engine.read_claims(&claims).await.map_err(store_failure)? {
            ClaimState::Resolved(id) => {
                return decide_and_act(action, ctx, request, Some(id)).await;
            }
            ClaimState::HeldBy(holder) if holder != owner => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ActionError::Vendor(
                        crmbridge_connectors::VendorError::Unreachable {
                            vendor: "crmbridge",
                            attempts: 1,
                            message: format!(
                                "another run ({holder}) is creating the same record; retrying later"
                            ),
                        },
                    ));
                }
                tokio::time::sleep(CLAIM_POLL).await;
                continue;
            }
            ClaimState::Free | ClaimState::HeldBy(_) => {}
        }
        // Saving refuses dedupe keys on an action that cannot search; an
        // automation saved before the action lost its search fails here.
        let lookup = action.lookup().ok_or_else(|| {
            ActionError::Config(format!(
                "{} cannot search for existing records",
                request.action
            ))
        })?;
        let found = lookup.find(ctx, &request.dedupe.lookup).await?;
        if let Some(id) = &found {
            engine
                .resolve_claims(&claims, id)
                .await
                .map_err(store_failure)?;
            return decide_and_act(action, ctx, request, found).await;
        }
        if !engine
            .take_claims(&claims, &owner)
            .await
            .map_err(store_failure)?
        {
            // Lost the race for a claim: loop to wait for the winner.
            continue;
        }
        let outcome = decide_and_act(action, ctx, request, None).await;
        match &outcome {
            Ok(StepOutcome::Done(output)) => engine
                .resolve_claims(&claims, &output.id)
                .await
                .map_err(store_failure)?,
            // Nothing was made (refused, skipped, stopped): let the next
            // run about the same key create at once instead of waiting for
            // the claim to lapse.
            Ok(StepOutcome::Stopped(_)) => engine
                .release_claims(&claims, &owner)
                .await
                .map_err(store_failure)?,
            Err(err) if !outcome_unknown(err) => engine
                .release_claims(&claims, &owner)
                .await
                .map_err(store_failure)?,
            // The vendor may have made it: the claim stays ours, and the
            // step sent again finds the record by its keys.
            _ => {}
        }
        return outcome;
    }
}

const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const CLAIM_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// A claim whose creator died is abandoned after this long.
const CLAIM_TTL_SECS: i64 = 600;
/// How long a resolved claim short-cuts the vendor search.
const RESOLVED_TTL_SECS: i64 = 24 * 3600;

fn store_failure(err: EngineError) -> ActionError {
    ActionError::Vendor(crmbridge_connectors::VendorError::Unreachable {
        vendor: "store",
        attempts: 1,
        message: err.to_string(),
    })
}

/// The claim keys of a create step: one per non-empty dedupe key, with the
/// value normalised so `+7 916…` and `8 916…` are one claim.
pub(crate) fn dedupe_claims(
    connection: &str,
    action: &str,
    lookup: &[crmbridge_mapping::LookupKey],
) -> Vec<keys::Key> {
    lookup
        .iter()
        .filter_map(|key| {
            let text = match &key.value {
                Value::String(s) => s.trim().to_owned(),
                Value::Null => return None,
                other => other.to_string(),
            };
            let normal = match key.field.as_str() {
                "phone" => {
                    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                    digits[digits.len().saturating_sub(10)..].to_owned()
                }
                "email" => text.to_lowercase(),
                _ => text,
            };
            (!normal.is_empty())
                .then(|| keys::dedupe_claim(connection, action, &key.field, &normal))
        })
        .collect()
}

pub(crate) enum ClaimState {
    Free,
    HeldBy(String),
    Resolved(String),
}

impl Engine {
    pub(crate) async fn read_claims(&self, claims: &[keys::Key]) -> EngineResult<ClaimState> {
        let mut held = None;
        for claim in claims {
            if let Some(item) = self.store.get(&claim.pk, &claim.sk).await? {
                if let Some(id) = item.body["id"].as_str() {
                    return Ok(ClaimState::Resolved(id.to_owned()));
                }
                if let Some(owner) = item.body["owner"].as_str() {
                    held.get_or_insert(owner.to_owned());
                }
            }
        }
        Ok(held.map_or(ClaimState::Free, ClaimState::HeldBy))
    }

    /// Takes every claim for `owner`; `false` if another owner holds one.
    async fn take_claims(&self, claims: &[keys::Key], owner: &str) -> EngineResult<bool> {
        let expires = self.now().timestamp() + CLAIM_TTL_SECS;
        for claim in claims {
            let item = crmbridge_store::Item::new(
                claim.pk.clone(),
                claim.sk.clone(),
                json!({"owner": owner}),
            )
            .expiring_at(expires);
            if let crmbridge_store::PutOutcome::Exists(existing) =
                self.store.put_if_absent(item).await?
                && existing.body["owner"].as_str() != Some(owner)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gives up the claims `owner` holds (and has not resolved).
    async fn release_claims(&self, claims: &[keys::Key], owner: &str) -> EngineResult<()> {
        for claim in claims {
            if let Some(item) = self.store.get(&claim.pk, &claim.sk).await?
                && item.body["id"].is_null()
                && item.body["owner"].as_str() == Some(owner)
            {
                self.store.delete(&claim.pk, &claim.sk).await?;
            }
        }
        Ok(())
    }

    async fn resolve_claims(&self, claims: &[keys::Key], id: &str) -> EngineResult<()> {
        let expires = self.now().timestamp() + RESOLVED_TTL_SECS;
        for claim in claims {
            let item =
                crmbridge_store::Item::new(claim.pk.clone(), claim.sk.clone(), json!({"id": id}))
                    .expiring_at(expires);
            self.store.put(item).await?;
        }
        Ok(())
    }
}

async fn decide_and_act(
    action: &dyn Action,
    ctx: &CallContext<'_>,
    request: &crmbridge_mapping::RenderedRequest,
    found: Option<String>,
) -> Result<StepOutcome, ActionError> {
    match request.dedupe.decide(found.as_deref()) {
        DedupeDecision::Create => action
            .execute(ctx, &request.fields, None)
            .await
            .map(StepOutcome::Done),
        DedupeDecision::UseExisting { id } => Ok(StepOutcome::Done(ActionOutput {
            id: id.clone(),
            record: json!({"id": id, "existing": true}),
            response_status: 200,
            attempts: 0,
        })),
        DedupeDecision::Update { id } => action
            .execute(ctx, &request.fields, Some(&id))
            .await
            .map(StepOutcome::Done),
        DedupeDecision::Stop { reason } => Ok(StepOutcome::Stopped(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_and_distinct() {
        let event = EventId::from_source("c", "1");
        assert_eq!(run_id(&event, None), run_id(&event, None));
        assert_ne!(run_id(&event, None), run_id(&event, Some("a")));
        assert_ne!(run_id(&event, Some("a")), run_id(&event, Some("b")));
    }
}
