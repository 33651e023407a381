//! The findings in words, in English or in Portuguese (pt-BR) for the ISP's support
//! staff. Every sentence lives here, once per language, so the two never drift apart
//! in what they say (a test checks that each finding has both).

use skeelo_domain::lifecycle::Status;

use crate::{EventRef, Finding, Fix};

/// The reader's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Português (Brasil), for the ISP's support staff.
    PtBr,
}

impl Lang {
    /// `en` or `pt-BR` (any case, `_` for `-`; `pt` alone is pt-BR).
    pub fn parse(raw: &str) -> Result<Lang, String> {
        match raw.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "en" | "en-us" | "en-gb" => Ok(Lang::En),
            "pt-br" | "pt" => Ok(Lang::PtBr),
            other => Err(format!("`{other}`: the languages are en and pt-BR")),
        }
    }

    fn pick(self, en: &str, pt: &str) -> String {
        match self {
            Lang::En => en.to_string(),
            Lang::PtBr => pt.to_string(),
        }
    }

    /// The fleet never heard of contract `id`.
    pub fn no_contract(self, id: &str) -> String {
        match self {
            Lang::En => format!("no contract {id}: the fleet has received no event for it"),
            Lang::PtBr => format!("contrato {id} desconhecido: nenhum evento dele chegou"),
        }
    }

    /// A CPF or CNPJ was given where a contract id goes.
    pub fn document_as_contract(self, masked: &str) -> String {
        match self {
            Lang::En => format!(
                "no contract has the id {masked}, which is a CPF or CNPJ: use --document to find a subscriber's contracts"
            ),
            Lang::PtBr => format!(
                "nenhum contrato tem o id {masked}, que é um CPF ou CNPJ: use --document para achar os contratos de um assinante"
            ),
        }
    }

    /// A subscription status.
    pub fn status(self, s: Status) -> &'static str {
        match (self, s) {
            (Lang::En, s) => s.as_str(),
            (Lang::PtBr, Status::Active) => "ativo",
            (Lang::PtBr, Status::Inactive) => "inativo",
            (Lang::PtBr, Status::Cancelled) => "cancelado",
        }
    }

    /// No subscription.
    pub fn nothing(self) -> String {
        self.pick("nothing", "nada")
    }

    /// No active subscription.
    pub fn nothing_active(self) -> String {
        self.pick("nothing active", "nada ativo")
    }

    /// No contract names that document.
    pub fn no_subscriber(self, masked: &str) -> String {
        match self {
            Lang::En => format!("no synced contract names the document {masked}"),
            Lang::PtBr => format!("nenhum contrato sincronizado tem o documento {masked}"),
        }
    }

    /// The first line of an explanation.
    pub fn title(self, id: &str, headline: &str) -> String {
        match self {
            Lang::En => format!("Contract {id}: {headline}"),
            Lang::PtBr => format!("Contrato {id}: {headline}"),
        }
    }

    /// Has the subscriber access, and the main reason, in a few words.
    pub fn headline(self, found: &[Finding]) -> String {
        let has = |p: fn(&Finding) -> bool| found.iter().any(p);
        if has(|f| matches!(f, Finding::HasAccess { .. })) {
            return self.pick("HAS ACCESS", "TEM ACESSO");
        }
        if has(|f| {
            matches!(
                f,
                Finding::Drift {
                    gives_access: true,
                    ..
                }
            )
        }) {
            return self.pick(
                "HAS ACCESS at Skeelo, but should not: Skeelo differs",
                "TEM ACESSO na Skeelo, mas não deveria: a Skeelo diverge",
            );
        }
        if has(|f| {
            matches!(
                f,
                Finding::AwaitingSync {
                    sync_requeued: true,
                    sync_parked: false,
                    ..
                }
            )
        }) {
            return self.pick(
                "NO ACCESS YET: its sync was sent back and waits its turn",
                "SEM ACESSO AINDA: a sincronização foi reenviada e aguarda a vez",
            );
        }
        if has(|f| {
            matches!(
                f,
                Finding::AwaitingSync {
                    sync_parked: true,
                    ..
                }
            )
        }) {
            return self.pick(
                "NO ACCESS YET: its sync is parked",
                "SEM ACESSO AINDA: a sincronização está parada",
            );
        }
        if has(|f| matches!(f, Finding::AwaitingSync { .. })) {
            return self.pick(
                "NO ACCESS YET: the ERP has not sent the sync",
                "SEM ACESSO AINDA: o ERP não enviou a sincronização",
            );
        }
        if has(|f| matches!(f, Finding::Cancelled { .. } | Finding::CancelledBeforeSync)) {
            return self.pick("NO ACCESS: cancelled", "SEM ACESSO: cancelado");
        }
        let suspended = has(|f| matches!(f, Finding::Suspended { .. }));
        let blocked = has(|f| matches!(f, Finding::Blocked { .. }));
        match (suspended, blocked) {
            (true, true) => {
                return self.pick(
                    "NO ACCESS: suspended and blocked",
                    "SEM ACESSO: suspenso e bloqueado",
                )
            }
            (true, false) => {
                return self.pick(
                    "NO ACCESS: suspended by the ERP",
                    "SEM ACESSO: suspenso pelo ERP",
                )
            }
            (false, true) => {
                return self.pick(
                    "NO ACCESS: blocked by hand",
                    "SEM ACESSO: bloqueado manualmente",
                )
            }
            (false, false) => {}
        }
        if has(|f| matches!(f, Finding::SkeeloUnreachable { .. })) {
            return self.pick(
                "SHOULD HAVE ACCESS (Skeelo could not be asked)",
                "DEVERIA TER ACESSO (a Skeelo não pôde ser consultada)",
            );
        }
        self.pick(
            "NO ACCESS, but should have it: Skeelo differs",
            "SEM ACESSO, mas deveria ter: a Skeelo diverge",
        )
    }

    /// A label: `subscriber`, `should_hold`, `holds_now` or `events`.
    pub fn label(self, key: &str) -> String {
        let (en, pt) = match key {
            "subscriber" => ("Subscriber", "Assinante"),
            "should_hold" => ("Should be", "Deveria ser"),
            "holds_now" => ("Skeelo now", "Skeelo agora"),
            "events" => ("Events, oldest first", "Eventos, do mais antigo"),
            _ => (key, key),
        };
        self.pick(en, pt)
    }

    /// What Skeelo answered just now.
    pub fn asked_now(self, holds: &str) -> String {
        match self {
            Lang::En => format!("{holds} (asked just now)"),
            Lang::PtBr => format!("{holds} (consultado agora)"),
        }
    }

    /// Skeelo could not be asked.
    pub fn not_asked(self) -> String {
        self.pick(
            "unknown (could not be asked)",
            "desconhecido (sem resposta)",
        )
    }

    fn by(self, e: &Option<EventRef>) -> String {
        let Some(e) = e else {
            return String::new();
        };
        let mut s = match self {
            Lang::En => format!(" (event v{}", e.version),
            Lang::PtBr => format!(" (evento v{}", e.version),
        };
        if let Some(at) = &e.at {
            s += &match self {
                Lang::En => format!(" of {at}"),
                Lang::PtBr => format!(" de {at}"),
            };
        }
        if let Some(actor) = &e.actor {
            s += &match self {
                Lang::En => format!(", by {actor}"),
                Lang::PtBr => format!(", por {actor}"),
            };
        }
        s + ")"
    }

    /// The finding as one sentence.
    pub fn finding(self, f: &Finding) -> String {
        match (self, f) {
            (Lang::En, Finding::HasAccess { products }) => format!(
                "Skeelo holds an active subscription with {}, as the ERP's events say it should.",
                join(products)
            ),
            (Lang::PtBr, Finding::HasAccess { products }) => format!(
                "A Skeelo tem uma assinatura ativa com {}, como os eventos do ERP pedem.",
                join(products)
            ),
            (Lang::En, Finding::AwaitingSync { recorded, sync_parked, sync_requeued }) => format!(
                "{}; {recorded} later event(s) are recorded and wait for it.",
                if *sync_parked {
                    "The contract's sync (the event that creates the subscription) came but is parked, see below"
                } else if *sync_requeued {
                    "The contract's sync (the event that creates the subscription) came, was parked and has been sent back, see below"
                } else {
                    "The ERP has not sent this contract's sync (the event that creates the subscription)"
                }
            ),
            (Lang::PtBr, Finding::AwaitingSync { recorded, sync_parked, sync_requeued }) => format!(
                "{}; {recorded} evento(s) posterior(es) estão registrados e aguardam por ela.",
                if *sync_parked {
                    "A sincronização do contrato (o evento que cria a assinatura) chegou, mas está parada, veja abaixo"
                } else if *sync_requeued {
                    "A sincronização do contrato (o evento que cria a assinatura) chegou, ficou parada e foi reenviada, veja abaixo"
                } else {
                    "O ERP ainda não enviou a sincronização deste contrato (o evento que cria a assinatura)"
                }
            ),
            (Lang::En, Finding::Suspended { event }) => format!(
                "Suspended by the ERP{}, usually for arrears: the ERP reactivates it when paid.",
                self.by(event)
            ),
            (Lang::PtBr, Finding::Suspended { event }) => format!(
                "Suspenso pelo ERP{}, em geral por inadimplência: o ERP reativa quando for pago.",
                self.by(event)
            ),
            (Lang::En, Finding::Blocked { event }) => format!(
                "Blocked by hand in the ERP{}: only an unblock in the ERP gives access back.",
                self.by(event)
            ),
            (Lang::PtBr, Finding::Blocked { event }) => format!(
                "Bloqueado manualmente no ERP{}: só um desbloqueio no ERP devolve o acesso.",
                self.by(event)
            ),
            (Lang::En, Finding::Cancelled { event }) => format!(
                "Cancelled for good{}: a cancel cannot be undone.",
                self.by(event)
            ),
            (Lang::PtBr, Finding::Cancelled { event }) => format!(
                "Cancelado definitivamente{}: um cancelamento não pode ser desfeito.",
                self.by(event)
            ),
            (Lang::En, Finding::CancelledBeforeSync) => {
                "Cancelled before its sync was applied: it never had access.".into()
            }
            (Lang::PtBr, Finding::CancelledBeforeSync) => {
                "Cancelado antes de a sincronização ser aplicada: nunca teve acesso.".into()
            }
            (Lang::En, Finding::RejectedAfterCancel { count }) => format!(
                "{count} event(s) came after the cancel and were rejected."
            ),
            (Lang::PtBr, Finding::RejectedAfterCancel { count }) => format!(
                "{count} evento(s) chegaram depois do cancelamento e foram rejeitados."
            ),
            (Lang::En, Finding::Drift { should, holds, .. }) => format!(
                "Skeelo differs from the ERP's facts: it should be {should}, it holds {holds} (changed at Skeelo behind the fleet's back, or an answer was lost)."
            ),
            (Lang::PtBr, Finding::Drift { should, holds, .. }) => format!(
                "A Skeelo diverge dos fatos do ERP: deveria ser {should}, está {holds} (alterado na Skeelo por fora, ou uma resposta se perdeu)."
            ),
            (Lang::En, Finding::SkeeloUnreachable { error }) => {
                format!("Skeelo could not be asked now: {error}.")
            }
            (Lang::PtBr, Finding::SkeeloUnreachable { error }) => {
                format!("A Skeelo não respondeu agora: {error}.")
            }
            (Lang::En, Finding::Retrying { event_type, attempt, at, error }) => format!(
                "The {event_type} event failed ({error}) and is tried again by itself at about {at} ({attempt} attempt(s) used so far)."
            ),
            (Lang::PtBr, Finding::Retrying { event_type, attempt, at, error }) => format!(
                "O evento {event_type} falhou ({error}) e é tentado de novo sozinho por volta de {at} ({attempt} tentativa(s) usada(s) até agora)."
            ),
            (Lang::En, Finding::Outage { since, error }) => format!(
                "The fleet is in outage mode for Skeelo since {since} ({error}): events wait in their queues."
            ),
            (Lang::PtBr, Finding::Outage { since, error }) => format!(
                "A frota está em modo de indisponibilidade da Skeelo desde {since} ({error}): os eventos aguardam nas filas."
            ),
            (Lang::En, Finding::CallsInFlight { for_seconds }) => format!(
                "Calls to Skeelo for this contract may still land for up to {for_seconds} s."
            ),
            (Lang::PtBr, Finding::CallsInFlight { for_seconds }) => format!(
                "Chamadas à Skeelo deste contrato ainda podem chegar por até {for_seconds} s."
            ),
            (
                Lang::En,
                Finding::Parked {
                    id,
                    event_type,
                    reason,
                    error_class,
                    error,
                    ..
                },
            ) => format!(
                "Dead letter #{id}: the {event_type} event is parked ({reason}, {error_class}): {error}"
            ),
            (
                Lang::PtBr,
                Finding::Parked {
                    id,
                    event_type,
                    reason,
                    error_class,
                    error,
                    ..
                },
            ) => format!(
                "Mensagem parada #{id}: o evento {event_type} está parado ({reason}, {error_class}): {error}"
            ),
            (Lang::En, Finding::Requeued { id, by, at }) => format!(
                "Dead letter #{id} was sent back by {by} at {at} and waits its turn in the requeue queue, behind new customers' events."
            ),
            (Lang::PtBr, Finding::Requeued { id, by, at }) => format!(
                "A mensagem parada #{id} foi reenviada por {by} em {at} e aguarda a vez na fila de reenvio, atrás dos eventos de clientes novos."
            ),
            (Lang::En, Finding::NothingPending) => {
                "Nothing is pending: Skeelo matches the ERP and no event waits.".into()
            }
            (Lang::PtBr, Finding::NothingPending) => {
                "Nada pendente: a Skeelo confere com o ERP e nenhum evento aguarda.".into()
            }
        }
    }

    /// What happens next, by itself or by whom, when there is something to say.
    pub fn next(self, f: &Finding) -> Option<String> {
        Some(match (self, f) {
            (Lang::En, Finding::AwaitingSync { .. }) => {
                "When the sync is applied, the subscription is created with these events in force.".into()
            }
            (Lang::PtBr, Finding::AwaitingSync { .. }) => {
                "Quando a sincronização for aplicada, a assinatura é criada já com esses eventos em vigor.".into()
            }
            (Lang::En, Finding::RejectedAfterCancel { .. }) => {
                "To give access again, create a new contract in the ERP.".into()
            }
            (Lang::PtBr, Finding::RejectedAfterCancel { .. }) => {
                "Para dar acesso de novo, crie um novo contrato no ERP.".into()
            }
            (Lang::En, Finding::Drift { repairable: true, .. }) => {
                "The fleet's periodic reconciliation brings Skeelo back in line by itself; to do it now: `skeelo-ops check --repair`.".into()
            }
            (Lang::PtBr, Finding::Drift { repairable: true, .. }) => {
                "A reconciliação periódica da frota corrige a Skeelo sozinha; para corrigir agora: `skeelo-ops check --repair`.".into()
            }
            (Lang::En, Finding::Drift { repairable: false, .. }) => {
                "No call can repair it (a cancel at Skeelo is final): create a new contract in the ERP, or ask Skeelo's support to restore the subscription.".into()
            }
            (Lang::PtBr, Finding::Drift { repairable: false, .. }) => {
                "Nenhuma chamada corrige isso (na Skeelo o cancelamento é definitivo): crie um novo contrato no ERP, ou peça ao suporte da Skeelo que restaure a assinatura.".into()
            }
            (Lang::En, Finding::Requeued { .. }) => {
                "It gets a new result once handled: the requeue queue takes the partner rate that events leave unused.".into()
            }
            (Lang::PtBr, Finding::Requeued { .. }) => {
                "Recebe um novo resultado quando for tratada: a fila de reenvio usa a taxa do parceiro que os eventos deixam livre.".into()
            }
            (Lang::En, Finding::SkeeloUnreachable { .. }) => {
                "Ask again later; the fleet retries its own calls by itself.".into()
            }
            (Lang::PtBr, Finding::SkeeloUnreachable { .. }) => {
                "Consulte de novo mais tarde; a frota repete as próprias chamadas sozinha.".into()
            }
            (Lang::En, Finding::Retrying { .. }) => {
                "No one needs to act: if it keeps failing until its last attempt, it is parked as a dead letter with the command that clears it.".into()
            }
            (Lang::PtBr, Finding::Retrying { .. }) => {
                "Ninguém precisa agir: se continuar falhando até a última tentativa, vira uma mensagem parada com o comando que a resolve.".into()
            }
            (Lang::En, Finding::Outage { .. }) => {
                "Nothing is lost: the fleet asks Skeelo every few seconds and handles the waiting events as soon as it answers.".into()
            }
            (Lang::PtBr, Finding::Outage { .. }) => {
                "Nada se perde: a frota consulta a Skeelo a cada poucos segundos e trata os eventos em espera assim que ela responder.".into()
            }
            (Lang::En, Finding::CallsInFlight { .. }) => {
                "The next event of this contract reads Skeelo back before acting.".into()
            }
            (Lang::PtBr, Finding::CallsInFlight { .. }) => {
                "O próximo evento deste contrato consulta a Skeelo antes de agir.".into()
            }
            (lang, Finding::Parked { id, fix, .. }) => {
                let command = fix.command(*id).unwrap_or_default();
                match (lang, fix) {
                    (Lang::En, Fix::ProductThenRequeue) => format!(
                        "Waits for the product: once the product is in Skeelo's catalogue, the fleet requeues it by itself (it looks every minute by default); to send it back at once: `{command}`."
                    ),
                    (Lang::PtBr, Fix::ProductThenRequeue) => format!(
                        "Aguarda o produto: quando o produto estiver no catálogo da Skeelo, a frota a reenvia sozinha (verifica a cada minuto, por padrão); para reenviar na hora: `{command}`."
                    ),
                    (Lang::En, Fix::CorrectInErp) => {
                        "Cannot be applied as it is: correct the data in the ERP, which sends a new event.".into()
                    }
                    (Lang::PtBr, Fix::CorrectInErp) => {
                        "Não pode ser aplicado assim: corrija os dados no ERP, que envia um novo evento.".into()
                    }
                    (Lang::En, Fix::ReadRefusalThenRequeue) => format!(
                        "Skeelo refused it: fix what its answer names (at Skeelo or in the ERP), then run `{command}`."
                    ),
                    (Lang::PtBr, Fix::ReadRefusalThenRequeue) => format!(
                        "A Skeelo recusou: corrija o que a resposta indica (na Skeelo ou no ERP) e execute `{command}`."
                    ),
                    (Lang::En, Fix::RequeueWhenHealthy) => format!(
                        "Skeelo or the database did not answer in time: once Skeelo answers again, the fleet requeues it by itself; to send it back at once: `{command}`."
                    ),
                    (Lang::PtBr, Fix::RequeueWhenHealthy) => format!(
                        "A Skeelo ou o banco de dados não responderam a tempo: quando a Skeelo responder de novo, a frota a reenvia sozinha; para reenviar na hora: `{command}`."
                    ),
                    (Lang::En, Fix::InspectFirst) => format!(
                        "RabbitMQ gave up delivering it (it failed again and again): read it with `{command}` before sending it back."
                    ),
                    (Lang::PtBr, Fix::InspectFirst) => format!(
                        "O RabbitMQ desistiu de entregá-la (falhou repetidas vezes): leia com `{command}` antes de reenviar."
                    ),
                }
            }
            _ => return None,
        })
    }

    /// An event's outcome, as a support agent reads it.
    pub fn outcome(self, code: &str) -> String {
        let (en, pt) = match code {
            "applied" => ("applied", "aplicado"),
            "deferred" => (
                "recorded, waits for the sync",
                "registrado, aguarda a sincronização",
            ),
            "duplicate" => ("duplicate, ignored", "duplicado, ignorado"),
            "superseded" => (
                "superseded by a newer event",
                "substituído por um evento mais novo",
            ),
            "rejected" => (
                "rejected: create a new contract",
                "rejeitado: crie um novo contrato",
            ),
            "dead_lettered" => ("parked for people", "parado para uma pessoa"),
            "repaired" => (
                "repaired: Skeelo brought back in line",
                "reparado: Skeelo de volta ao que os fatos dizem",
            ),
            "left_for_people" => (
                "changed at Skeelo, left for people",
                "alterado na Skeelo, para uma pessoa decidir",
            ),
            other => (other, other),
        };
        self.pick(en, pt)
    }

    /// The story table's columns.
    pub fn history_header(self) -> [&'static str; 5] {
        match self {
            Lang::En => ["RECEIVED", "TYPE", "VERSION", "OUTCOME", "ACTOR"],
            Lang::PtBr => ["RECEBIDO", "TIPO", "VERSÃO", "RESULTADO", "QUEM"],
        }
    }
}

fn join(products: &[skeelo_domain::event::Sku]) -> String {
    products
        .iter()
        .map(skeelo_domain::event::Sku::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
