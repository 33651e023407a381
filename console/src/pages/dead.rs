//! Dead letters: the groups, a filtered list (parked or archived), one letter, and
//! the operators' actions — requeue, purge (archive, restorable for the retention) and
//! restore — on one letter, the ticked rows, a group or a filter: always every letter
//! that matches (not the page on screen), after a confirmation that says how many.

use std::borrow::Cow;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, RawForm, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use skeelo_broker::{self as broker, Publisher};
use skeelo_domain::mask;
use skeelo_store::dead::{Filter, LetterState};

use super::{audit_reveal, refusal, render, unavailable, when, CsrfOnly, Page};
use crate::auth::Signed;
use crate::jobs::{Job, Started};
use crate::App;

/// Which letters an operator means, as the forms and links carry them. No personal
/// data: reasons, classes, types, a state and ids only. Every action acts on all the
/// letters that match, not on the page on screen.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    reason: String,
    class: String,
    event_type: String,
    /// These letters only (one, or the ticked rows of the list).
    ids: Vec<i64>,
    /// Archived letters rather than parked ones.
    archived: bool,
    /// No letter newer than this one: the confirmation's, so that what is done is
    /// what was counted, not also the letters parked since.
    up_to_id: Option<i64>,
}

impl Selection {
    /// From a query string or a form body, which may name `id` several times (the
    /// ticked rows). Unknown fields are ignored; an id that is not a number matches
    /// nothing rather than everything.
    pub(crate) fn from_pairs<'a>(
        pairs: impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
    ) -> (Selection, Fields) {
        let mut sel = Selection::default();
        let mut fields = Fields::default();
        for (k, v) in pairs {
            let v = v.trim().to_string();
            match k.as_ref() {
                "reason" => sel.reason = v,
                "class" => sel.class = v,
                "type" => sel.event_type = v,
                "state" => sel.archived = v == "archived",
                // A named letter that is no number (or empty) matches nothing, never
                // everything.
                "id" => sel.ids.push(v.parse().unwrap_or(-1)),
                "upto" => sel.up_to_id = v.parse().ok(),
                "csrf" => fields.csrf = v,
                "action" => fields.action = Action::from_name(&v),
                "expect" => fields.expect = v.parse().ok(),
                "ticked" => fields.ticked = true,
                _ => {}
            }
        }
        (sel, fields)
    }

    fn filter(&self) -> Filter {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Filter {
            ids: self.ids.clone(),
            state: Some(if self.archived {
                LetterState::Archived
            } else {
                LetterState::Parked
            }),
            reason: some(&self.reason),
            error_class: some(&self.class),
            event_type: some(&self.event_type),
            up_to_id: self.up_to_id,
            ..Filter::default()
        }
    }

    /// The same letters, in the state `action` acts on.
    fn for_action(mut self, action: Action) -> Selection {
        self.archived = action == Action::Restore;
        self
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.ids.is_empty() {
            let ids: Vec<String> = self.ids.iter().map(i64::to_string).collect();
            parts.push(format!("id {}", ids.join(",")));
        }
        for (k, v) in [
            ("reason", &self.reason),
            ("class", &self.class),
            ("type", &self.event_type),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k} {v}"));
            }
        }
        if let Some(upto) = self.up_to_id {
            parts.push(format!("up to #{upto}"));
        }
        let state = if self.archived { "archived" } else { "parked" };
        if parts.is_empty() {
            format!("every {state} letter")
        } else {
            format!("{state}: {}", parts.join(", "))
        }
    }
}

/// The fields of an action's form besides the selection.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    csrf: String,
    action: Option<Action>,
    /// The count the operator confirmed.
    expect: Option<i64>,
    /// The form of ticked rows: with none ticked it means nothing, not everything.
    ticked: bool,
}

/// What an operator may do to letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send parked letters back to the fleet.
    Requeue,
    /// Archive parked letters (restorable for the retention).
    Purge,
    /// Bring archived letters back to parked.
    Restore,
}

impl Action {
    fn from_name(s: &str) -> Option<Action> {
        match s {
            "requeue" => Some(Action::Requeue),
            "purge" => Some(Action::Purge),
            "restore" => Some(Action::Restore),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Requeue => "requeue",
            Action::Purge => "purge",
            Action::Restore => "restore",
        }
    }
}

struct GroupRow {
    reason: String,
    class: String,
    event_type: String,
    count: i64,
    first: String,
    last: String,
}

struct LetterRow {
    id: i64,
    event_type: String,
    contract: String,
    reason: String,
    class: String,
    attempts: i32,
    last: String,
    error: String,
    /// Archived letters: restorable until then (empty once it passed).
    restore_until: String,
}

#[derive(Template)]
#[template(path = "dead.html")]
struct Groups {
    page: Page,
    groups: Vec<GroupRow>,
    letters: Vec<LetterRow>,
    matched: i64,
    reason: String,
    class: String,
    event_type: String,
    archived: bool,
    archived_count: i64,
    retention_days: u32,
}

pub(crate) async fn groups(
    State(app): State<Arc<App>>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    let (sel, _) = Selection::from_pairs(form_urlencoded::parse(
        query.as_deref().unwrap_or_default().as_bytes(),
    ));
    let filter = sel.filter();
    let read = async {
        let groups = app
            .store
            .dead_letter_groups(&Filter {
                state: Some(LetterState::Parked),
                ..Filter::default()
            })
            .await?;
        let letters = app.store.dead_letters(&filter, 100).await?;
        let matched = app.store.count_dead_letters(&filter).await?;
        let archived = app
            .store
            .count_dead_letters(&Filter {
                state: Some(LetterState::Archived),
                ..Filter::default()
            })
            .await?;
        Ok::<_, skeelo_store::StoreError>((groups, letters, matched, archived))
    };
    let (groups, letters, matched, archived_count) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let now = time::OffsetDateTime::now_utc();
    render(Groups {
        page: signed.page(),
        groups: groups
            .into_iter()
            .map(|g| GroupRow {
                reason: g.reason,
                class: g.error_class,
                event_type: g.event_type,
                count: g.count,
                first: when(g.oldest),
                last: when(g.newest),
            })
            .collect(),
        letters: letters
            .into_iter()
            .map(|d| LetterRow {
                id: d.id,
                event_type: d.event_type,
                contract: d.contract_id.unwrap_or_default(),
                reason: d.reason,
                class: d.error_class,
                attempts: d.attempts,
                last: when(d.last_failed_at),
                error: mask::text(&d.last_error),
                restore_until: d
                    .restore_until
                    .filter(|t| *t > now)
                    .map(when)
                    .unwrap_or_default(),
            })
            .collect(),
        matched,
        reason: sel.reason,
        class: sel.class,
        event_type: sel.event_type,
        archived: sel.archived,
        archived_count,
        retention_days: app.settings.retention_days,
    })
}

/// One line of a contract's story, for people.
pub(crate) struct HistoryRow {
    pub(crate) received: String,
    pub(crate) event_type: String,
    pub(crate) version: String,
    pub(crate) outcome: String,
    pub(crate) actor: String,
    pub(crate) detail: String,
}

pub(crate) fn history_rows(
    history: Vec<skeelo_store::HistoryEntry>,
    lang: skeelo_explain::Lang,
) -> Vec<HistoryRow> {
    history
        .into_iter()
        .map(|h| HistoryRow {
            received: when(h.received_at),
            event_type: h.event_type,
            version: h
                .version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "-".into()),
            outcome: lang.outcome(&h.outcome),
            actor: h.actor.unwrap_or_default(),
            detail: mask::text(&h.detail),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "letter.html")]
struct One {
    page: Page,
    id: i64,
    state: String,
    event_type: String,
    contract: String,
    reason: String,
    class: String,
    attempts: i32,
    first: String,
    last: String,
    error: String,
    body: String,
    revealed: bool,
    parked: bool,
    archived: bool,
    restore_until: String,
    history: Vec<HistoryRow>,
}

async fn letter(app: &App, signed: &Signed, id: i64, reveal: bool) -> Response {
    let d = match app.store.dead_letter(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return refusal(StatusCode::NOT_FOUND, signed.page(), signed.t().not_found),
        Err(e) => return unavailable(e),
    };
    let history = match &d.contract_id {
        Some(c) => match app.store.history(c).await {
            Ok(h) => h,
            Err(e) => return unavailable(e),
        },
        None => Vec::new(),
    };
    let body = serde_json::to_string_pretty(&mask::body(&d.body, reveal)).unwrap_or_default();
    render(One {
        page: signed.page(),
        id: d.id,
        state: match d.state {
            LetterState::Parked => signed.t().state_parked,
            LetterState::Requeued => signed.t().state_requeued,
            LetterState::Archived => signed.t().state_archived,
        }
        .to_string(),
        parked: d.state == LetterState::Parked,
        archived: d.state == LetterState::Archived,
        restore_until: d
            .restore_until
            .filter(|t| *t > time::OffsetDateTime::now_utc())
            .map(when)
            .unwrap_or_default(),
        event_type: d.event_type,
        contract: d.contract_id.unwrap_or_default(),
        reason: d.reason,
        class: d.error_class,
        attempts: d.attempts,
        first: when(d.first_failed_at),
        last: when(d.last_failed_at),
        error: if reveal {
            d.last_error
        } else {
            mask::text(&d.last_error)
        },
        body,
        revealed: reveal,
        history: history_rows(history, signed.lang.explain()),
    })
}

pub(crate) async fn one(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<i64>,
) -> Response {
    letter(&app, &signed, id, false).await
}

/// An operator reveals one letter's personal data; the audit trail records it.
pub(crate) async fn reveal(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let target = format!("dead letter {id} (console)");
    let detail = serde_json::json!({ "ids": [id] });
    if let Some(r) = audit_reveal(&app, &signed, &f.csrf, target, detail).await {
        return r;
    }
    letter(&app, &signed, id, true).await
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct Confirm {
    page: Page,
    action: &'static str,
    title: &'static str,
    explain: String,
    count: i64,
    what: String,
    reason: String,
    class: String,
    event_type: String,
    ids: Vec<i64>,
    upto: String,
}

/// The page that says how many letters match now, what the action does to them, and
/// asks.
fn ask(
    app: &App,
    signed: &Signed,
    action: Action,
    selection: Selection,
    count: i64,
    upto: Option<i64>,
) -> Response {
    let t = signed.t();
    let (title, explain) = match action {
        Action::Requeue => (t.confirm_requeue, t.will_requeue.to_string()),
        Action::Purge => {
            let days = app.settings.retention_days;
            let until = time::OffsetDateTime::now_utc()
                + std::time::Duration::from_secs(u64::from(days) * 86_400);
            (
                t.confirm_purge,
                t.will_purge
                    .replace("{days}", &days.to_string())
                    .replace("{until}", &when(until)),
            )
        }
        Action::Restore => (t.confirm_restore, t.will_restore.to_string()),
    };
    render(Confirm {
        page: signed.page(),
        action: action.as_str(),
        title,
        explain,
        count,
        what: selection.describe(),
        ids: selection.ids,
        upto: upto.map(|u| u.to_string()).unwrap_or_default(),
        reason: selection.reason,
        class: selection.class,
        event_type: selection.event_type,
    })
}

/// An action's form: its selection (in the state the action takes letters from) and
/// the rest, once the anti-forgery token and the role are checked.
fn action_form(
    signed: &Signed,
    body: &[u8],
) -> Result<(Action, Selection, Option<i64>), Box<Response>> {
    let (sel, fields) = Selection::from_pairs(form_urlencoded::parse(body));
    if let Some(r) = signed.refused_action(&fields.csrf) {
        return Err(Box::new(r));
    }
    let Some(action) = fields.action else {
        return Err(Box::new(refusal(
            StatusCode::BAD_REQUEST,
            signed.page(),
            signed.t().unknown_action,
        )));
    };
    if fields.ticked && sel.ids.is_empty() {
        return Err(Box::new(refusal(
            StatusCode::BAD_REQUEST,
            signed.page(),
            signed.t().nothing_ticked,
        )));
    }
    Ok((action, sel.for_action(action), fields.expect))
}

/// Says how many letters an action would take, and asks.
pub(crate) async fn confirm(
    State(app): State<Arc<App>>,
    signed: Signed,
    RawForm(body): RawForm,
) -> Response {
    let (action, sel, _) = match action_form(&signed, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match recount(&app, sel).await {
        Ok((sel, count, upto)) => ask(&app, &signed, action, sel, count, upto),
        Err(e) => unavailable(e),
    }
}

#[derive(Template)]
#[template(path = "acted.html")]
struct Acted {
    page: Page,
    action: &'static str,
    count: u64,
    what: String,
    done: &'static str,
}

/// The most letters one restore takes (a requeue takes as many as
/// `skeelo_repair::requeue` does).
const MOST_RESTORED: i64 = 100_000;
/// Requeues running at once from this console (each holds a broker connection).
const MOST_JOBS: usize = 4;

/// The letters `sel` names, counted afresh: how many match now and the newest of them
/// (the mark the confirmation carries), whatever mark it came with.
async fn recount(
    app: &App,
    sel: Selection,
) -> Result<(Selection, i64, Option<i64>), skeelo_store::StoreError> {
    let sel = Selection {
        up_to_id: None,
        ..sel
    };
    let filter = sel.filter();
    let upto = app.store.newest_dead_letter_id(&filter).await?;
    let count = app.store.count_dead_letters(&filter).await?;
    Ok((sel, count, upto))
}

/// Acts on the letters the operator confirmed — those of the selection up to the
/// newest one counted, if they are still as many (otherwise asks again with the new
/// count). A requeue runs as a job of its own, whose page shows its progress (a
/// browser that gives up waiting does not stop it; the console waits for it when it
/// stops); the same requeue asked twice (a double click) is one job. Archiving and
/// restoring are one transaction each, with their audit line.
pub(crate) async fn act(
    State(app): State<Arc<App>>,
    signed: Signed,
    RawForm(body): RawForm,
) -> Response {
    let (action, sel, expected) = match action_form(&signed, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let filter = sel.filter();
    let now = match app.store.count_dead_letters(&filter).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    // Without the confirmation's mark (a hand-made form, or nothing matched then) it
    // asks: nothing is done on a count alone.
    if expected != Some(now) || sel.up_to_id.is_none() {
        return match recount(&app, sel).await {
            Ok((sel, count, upto)) => ask(&app, &signed, action, sel, count, upto),
            Err(e) => unavailable(e),
        };
    }
    let who = signed.session.account.name.clone();
    let what = format!("{} (console)", sel.describe());
    let t = signed.t();
    let count = match action {
        Action::Requeue => {
            if now > skeelo_repair::requeue::MOST {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    signed.page(),
                    t.too_many_to_requeue,
                );
            }
            let job = match app.jobs.start_unless_running(&who, &what, now, MOST_JOBS) {
                Started::New(job) => job,
                Started::Already(running) => {
                    return Redirect::to(&format!("/dead/jobs/{}", running.id)).into_response();
                }
                Started::TooMany => {
                    return refusal(
                        StatusCode::TOO_MANY_REQUESTS,
                        signed.page(),
                        t.too_many_jobs,
                    );
                }
            };
            let id = job.id;
            app.tasks
                .spawn(requeue(app.clone(), job, filter, who, what));
            return Redirect::to(&format!("/dead/jobs/{id}")).into_response();
        }
        Action::Purge => {
            let days = app.settings.retention_days;
            let retention = std::time::Duration::from_secs(u64::from(days) * 86_400);
            match app.store.archive(&filter, &who, retention, &what).await {
                Ok(n) => n,
                Err(e) => return unavailable(e),
            }
        }
        Action::Restore => {
            if now > MOST_RESTORED {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    signed.page(),
                    t.too_many_to_restore,
                );
            }
            let restored = async {
                let ids = app.store.dead_letter_ids(&filter, MOST_RESTORED).await?;
                app.store.restore(&ids, &who, &what).await
            };
            match restored.await {
                Ok(n) => n,
                Err(e) => return unavailable(e),
            }
        }
    };
    tracing::info!(user = %who, action = action.as_str(), letters = count, "dead letters changed from the console");
    render(Acted {
        page: signed.page(),
        action: action.as_str(),
        count,
        what: sel.describe(),
        done: match action {
            Action::Purge => t.purged_done,
            _ => t.restored_done,
        },
    })
}

/// A requeue job: sends the letters back, noting its progress for its page.
async fn requeue(app: Arc<App>, job: Arc<Job>, filter: Filter, who: String, what: String) {
    let run = async {
        let connection = broker::connect(&app.settings.amqp_url, "skeelo-console requeue").await?;
        let publisher = Publisher::open(&connection).await?;
        let progress = job.clone();
        let stop = app.stop.clone();
        let done = skeelo_repair::requeue::matching(
            &app.store,
            &publisher,
            &filter,
            &who,
            &what,
            &mut move |n| {
                progress.advance(n);
                !stop.is_cancelled()
            },
        )
        .await;
        let _ = connection.close(200, "done".into()).await;
        Ok::<_, anyhow::Error>(done?)
    };
    match run.await {
        Ok(done) => {
            tracing::info!(user = %who, requeued = done.ids.len(), "requeued from the console");
            job.finish(Ok((done.ids.len(), done.stopped_early)));
        }
        Err(e) => {
            tracing::warn!(user = %who, error = %format!("{e:#}"), "a requeue from the console failed");
            job.finish(Err(mask::text(&format!("{e:#}"))));
        }
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    page: Page,
    id: u64,
    who: String,
    what: String,
    of: i64,
    done: usize,
    running: bool,
    stopped_early: Option<String>,
    failed: Option<String>,
}

/// A requeue's progress; the page reloads itself while it runs (no script needed).
pub(crate) async fn job(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<u64>,
) -> Response {
    let Some(job) = app.jobs.get(id) else {
        return refusal(StatusCode::NOT_FOUND, signed.page(), signed.t().not_found);
    };
    let state = job.state();
    render(JobPage {
        page: signed.page(),
        id,
        who: job.who.clone(),
        what: job.what.clone(),
        of: job.of,
        done: state.done,
        running: state.ended.is_none(),
        stopped_early: match &state.ended {
            Some(Ok((_, why))) => why.clone(),
            _ => None,
        },
        failed: match &state.ended {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        },
    })
}
