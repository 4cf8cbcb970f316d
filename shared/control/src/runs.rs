//! The run log: the indexes every run is listed under, listing with
//! filters, and replay.
//!
//! Every run is indexed once, under its tenant, by `{created_at}#{run}`, so
//! a listing by time is a range of one partition, newest first. A listing
//! (or replay) of one automation reads the same range and passes over other
//! automations' entries without reading their runs. The entries never
//! change after the run is created (`created_at` is the event's arrival, so
//! another delivery writes the same entry); a listing reads each listed run
//! for its status.
//!
//! **Replay** resumes a *failed* run of an automation for the event it
//! stored: steps that succeeded are not repeated (their outputs feed the
//! later steps), the failed step and the ones after it run again under the
//! automation's current definition. Only failed runs are replayed: a run
//! that succeeded, was filtered, matched no automation or is still running
//! is refused with 409 (`conflict`) — replaying it would either do nothing
//! or repeat writes on the target. The automation must still exist, be
//! enabled and still be triggered by the run's event kind on the run's
//! connection. A replay answers with the run as it stands afterwards, which
//! may be failed again (the error is in its steps).

use chrono::{DateTime, Utc};
use crmbridge_store::{Item, Query};
use serde::Serialize;

use crate::admin::{Listing, Principal};
use crate::automations::{Automations as _, PLAIN_ID_RULE, is_plain_id};
use crmbridge_engine::bookkeeping::{indexes_run_of, sort_time};
use crmbridge_engine::records::{Role, RunRecord, RunStatus, RunSummary, StepStatus};
use crmbridge_engine::{Engine, EngineError, EngineResult, item, keys};

/// The most runs one listing reads before it returns a short page with a
/// cursor (a selective status filter must not scan forever).
const MAX_SCANNED: usize = 2000;
/// The most entries of other automations one listing of an automation
/// passes over before it returns a short page with a cursor. They cost only
/// the bytes of the query, not a read of their runs each.
const MAX_PASSED_OVER: usize = 20_000;
/// The most runs one automation replay handles; `more` says to call again.
pub const MAX_REPLAYED: usize = 100;

/// What to list. `since` is inclusive, `until` exclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFilter {
    pub automation: Option<String>,
    pub status: Option<RunStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
    pub cursor: Option<String>,
}

impl Default for RunFilter {
    fn default() -> Self {
        Self {
            automation: None,
            status: None,
            since: None,
            until: None,
            limit: 50,
            cursor: None,
        }
    }
}

/// What an automation replay did.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// Each replayed run as it stands afterwards.
    pub replayed: Vec<RunSummary>,
    /// More failed runs remain: call again (with the same `since`).
    pub more: bool,
}

/// What the admin API does here (implemented by [`Engine`]; import
/// `crmbridge_control::prelude::*`).
pub trait Runs {
    /// Lists the caller's runs, newest first.
    async fn list_runs(
        &self,
        who: &Principal,
        filter: RunFilter,
    ) -> EngineResult<Listing<RunSummary>>;

    async fn get_run(&self, who: &Principal, id: &str) -> EngineResult<RunRecord>;

    /// Replays one failed run (see the module docs).
    async fn replay_run(&self, who: &Principal, id: &str) -> EngineResult<RunRecord>;

    /// Replays every failed run of an automation created at or after
    /// `since`, oldest first, at most [`MAX_REPLAYED`] per call.
    async fn replay_automation(
        &self,
        who: &Principal,
        automation: &str,
        since: DateTime<Utc>,
    ) -> EngineResult<ReplayReport>;
}

impl Runs for Engine {
    async fn list_runs(
        &self,
        who: &Principal,
        filter: RunFilter,
    ) -> EngineResult<Listing<RunSummary>> {
        who.require_role(Role::Viewer, "read runs")?;
        if !(1..=200).contains(&filter.limit) {
            return Err(EngineError::bad_request(
                "limit",
                "must be between 1 and 200",
            ));
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(EngineError::bad_request(
                "until",
                "must be later than since",
            ));
        }
        if let Some(cursor) = &filter.cursor
            && !cursor.contains('#')
        {
            return Err(EngineError::bad_request(
                "cursor",
                "not a cursor from an earlier page",
            ));
        }
        if let Some(automation) = &filter.automation {
            check_id("automation", automation)?;
        }
        let pk = keys::tenant_runs_pk(&who.tenant);
        let of_listed = |entry: &Item| {
            filter
                .automation
                .as_deref()
                .is_none_or(|automation| indexes_run_of(entry, automation))
        };
        // Newest first: start below `until` (exclusive) or the cursor.
        let mut start = filter.until.map(sort_time);
        if let Some(cursor) = filter.cursor {
            start = Some(match start {
                Some(until) if until < cursor => until,
                _ => cursor,
            });
        }
        let since = filter.since.map(sort_time);
        let mut items = Vec::new();
        let (mut scanned, mut passed_over) = (0, 0);
        loop {
            // Each listed entry costs a read of its run: without a filter,
            // ask for no more than the page still needs.
            let wanted = if filter.status.is_some() || filter.automation.is_some() {
                200
            } else {
                filter.limit - items.len()
            };
            let page = self
                .store()
                .query(
                    Query::prefix(pk.clone(), "")
                        .limit(wanted)
                        .after(start.clone())
                        .descending(),
                )
                .await?;
            let count = page.items.len();
            let entries: Vec<&Item> = page
                .items
                .iter()
                .take_while(|entry| since.as_ref().is_none_or(|since| entry.sk >= *since))
                .collect();
            // Nothing after this page: the end of the log, or `since`.
            let ended = entries.len() < count || page.next.is_none();
            // Other automations' runs are passed over unread (each entry is
            // decoded once to tell).
            let is_listed: Vec<bool> = entries.iter().map(|entry| of_listed(entry)).collect();
            let listed: Vec<Item> = entries
                .iter()
                .zip(&is_listed)
                .filter(|(_, listed)| **listed)
                .map(|(entry, _)| (*entry).clone())
                .collect();
            let mut current = self.runs_of_entries(&listed).await?.into_iter();
            for (i, (entry, listed)) in entries.iter().zip(is_listed).enumerate() {
                start = Some(entry.sk.clone());
                if listed {
                    scanned += 1;
                    if let Some(Some(summary)) = current.next()
                        && filter.status.is_none_or(|status| status == summary.status)
                    {
                        items.push(summary);
                    }
                } else {
                    passed_over += 1;
                }
                let last = i + 1 == entries.len() && ended;
                if items.len() == filter.limit
                    || scanned >= MAX_SCANNED
                    || passed_over >= MAX_PASSED_OVER
                {
                    return Ok(Listing {
                        items,
                        next_cursor: if last { None } else { start },
                    });
                }
            }
            if ended {
                return Ok(Listing {
                    items,
                    next_cursor: None,
                });
            }
        }
    }

    async fn get_run(&self, who: &Principal, id: &str) -> EngineResult<RunRecord> {
        who.require_role(Role::Viewer, "read runs")?;
        match self.read::<RunRecord>(&keys::run(id)).await? {
            Some((run, _)) if run.tenant == who.tenant => Ok(run),
            _ => Err(EngineError::NotFound {
                what: "run",
                id: id.to_owned(),
            }),
        }
    }

    async fn replay_run(&self, who: &Principal, id: &str) -> EngineResult<RunRecord> {
        who.require_role(Role::Admin, "replay runs")?;
        let run = self.get_run(who, id).await?;
        self.replay(who, run).await
    }

    async fn replay_automation(
        &self,
        who: &Principal,
        automation: &str,
        since: DateTime<Utc>,
    ) -> EngineResult<ReplayReport> {
        who.require_role(Role::Admin, "replay runs")?;
        let record = self.get_automation(who, automation).await?;
        self.check_replayable(&record)?;
        let pk = keys::tenant_runs_pk(&who.tenant);
        let mut failed = Vec::new();
        let mut more = false;
        // Ascending from `since`: `{since}#run…` sorts after `{since}`.
        let mut start = Some(sort_time(since));
        'pages: loop {
            let page = self
                .store()
                .query(Query::prefix(pk.clone(), "").limit(200).after(start))
                .await?;
            let own: Vec<Item> = page
                .items
                .into_iter()
                .filter(|entry| indexes_run_of(entry, automation))
                .collect();
            for summary in self.runs_of_entries(&own).await?.into_iter().flatten() {
                if summary.status == RunStatus::Failed {
                    if failed.len() == MAX_REPLAYED {
                        more = true;
                        break 'pages;
                    }
                    failed.push(summary.id);
                }
            }
            match page.next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
        let mut replayed = Vec::new();
        for id in failed {
            let run = match self.get_run(who, &id).await {
                Ok(run) => run,
                // Expired since it was listed.
                Err(EngineError::NotFound { .. }) => continue,
                Err(err) => return Err(err),
            };
            match self.replay(who, run).await {
                Ok(run) => replayed.push(RunSummary::from(&run)),
                // Replayed (or picked up by the bus) in the meantime.
                Err(EngineError::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        tracing::info!(tenant = %who.tenant, automation, replayed = replayed.len(), more, "automation replayed");
        Ok(ReplayReport { replayed, more })
    }
}

/// Helpers of [`Runs`] shared inside this crate.
pub(crate) trait RunsInternal {
    /// Gives a run a fresh budget of attempts, and turns a step that needs
    /// review into one that is sent again: replaying it is the person's
    /// decision that it should be.
    async fn prepare_replay(&self, id: &str) -> EngineResult<()>;

    fn check_replayable(
        &self,
        record: &crmbridge_engine::bookkeeping::AutomationRecord,
    ) -> EngineResult<()>;

    async fn replay(&self, who: &Principal, run: RunRecord) -> EngineResult<RunRecord>;
}

impl RunsInternal for Engine {
    async fn prepare_replay(&self, id: &str) -> EngineResult<()> {
        let Some((mut run, version)) = self.read::<RunRecord>(&keys::run(id)).await? else {
            return Err(EngineError::NotFound {
                what: "run",
                id: id.to_owned(),
            });
        };
        run.attempts_before_replay = run.attempts;
        if run.status == RunStatus::NeedsReview {
            run.status = RunStatus::Failed;
        }
        for step in &mut run.steps {
            if step.status == StepStatus::NeedsReview {
                step.status = StepStatus::Failed;
            }
        }
        let expires = run.created_at.timestamp() + self.config().run_ttl_secs;
        match self
            .store()
            .update_if_version(item(keys::run(id), &run)?.expiring_at(expires), version)
            .await
        {
            Ok(_) => Ok(()),
            Err(crmbridge_store::StoreError::Conflict { .. }) => Err(EngineError::conflict(
                "run",
                format!("run {id} changed while it was being replayed; try again"),
            )),
            Err(err) => Err(err.into()),
        }
    }

    fn check_replayable(
        &self,
        record: &crmbridge_engine::bookkeeping::AutomationRecord,
    ) -> EngineResult<()> {
        if let Some(reason) = &record.halted {
            return Err(EngineError::conflict(
                "automation",
                format!(
                    "automation {} is halted ({reason}); enable it to replay its runs",
                    record.automation.id
                ),
            ));
        }
        if !record.automation.enabled {
            return Err(EngineError::conflict(
                "automation",
                format!(
                    "automation {} is disabled; enable it to replay its runs",
                    record.automation.id
                ),
            ));
        }
        Ok(())
    }

    async fn replay(&self, who: &Principal, run: RunRecord) -> EngineResult<RunRecord> {
        let Some(automation) = run.automation.clone() else {
            return Err(EngineError::conflict(
                "run",
                format!(
                    "run {} matched no automation; there is nothing to replay",
                    run.id
                ),
            ));
        };
        let abandoned = run.status == RunStatus::Running
            && run
                .lease
                .as_ref()
                .is_none_or(|lease| lease.until <= self.now());
        if !matches!(run.status, RunStatus::Failed | RunStatus::NeedsReview) && !abandoned {
            return Err(EngineError::conflict(
                "run",
                format!(
                    "run {} is {}; only failed runs and runs that need review are replayed",
                    run.id,
                    run.status.as_str()
                ),
            ));
        }
        let record = match self.get_automation(who, &automation).await {
            Ok(record) => record,
            Err(EngineError::NotFound { .. }) => {
                return Err(EngineError::conflict(
                    "automation",
                    format!("automation {automation} was deleted; its runs cannot be replayed"),
                ));
            }
            Err(err) => return Err(err),
        };
        self.check_replayable(&record)?;
        let trigger = &record.automation.trigger;
        if trigger.connection != run.connection || trigger.event != run.event_kind {
            return Err(EngineError::conflict(
                "automation",
                format!(
                    "automation {automation} is no longer triggered by {} on connection {}",
                    run.event_kind, run.connection
                ),
            ));
        }
        self.prepare_replay(&run.id).await?;
        match self.run_automation(&run.event, &record).await {
            // A vendor failure is recorded on the run: show the run.
            Ok(_) | Err(EngineError::Action { .. }) => {}
            Err(err) => return Err(err),
        }
        let after = self.get_run(who, &run.id).await?;
        tracing::info!(tenant = %who.tenant, run = %run.id, status = ?after.status, "run replayed");
        Ok(after)
    }
}

/// An id given as a filter: plain, so it cannot reach another partition.
fn check_id(field: &str, id: &str) -> EngineResult<()> {
    if is_plain_id(id) {
        Ok(())
    } else {
        Err(EngineError::bad_request(field, PLAIN_ID_RULE))
    }
}
