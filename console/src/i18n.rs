//! The console's words in English and Brazilian Portuguese. The account's language
//! wins; otherwise the browser's (`Accept-Language`), English by default.

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    /// English.
    En,
    /// Português (Brasil), for the ISP's support staff.
    PtBr,
}

impl Lang {
    /// The account's choice, else the browser's first language we speak.
    pub(crate) fn pick(account: Option<&str>, accept_language: Option<&str>) -> Lang {
        match account {
            Some("pt-BR") => return Lang::PtBr,
            Some("en") => return Lang::En,
            _ => {}
        }
        let Some(header) = accept_language else {
            return Lang::En;
        };
        for part in header.split(',') {
            let tag = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("pt") {
                return Lang::PtBr;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::En
    }

    /// The words.
    pub(crate) fn words(self) -> &'static Words {
        match self {
            Lang::En => &EN,
            Lang::PtBr => &PT,
        }
    }
}

/// Every word the pages show.
#[derive(Debug)]
pub(crate) struct Words {
    pub(crate) html_lang: &'static str,
    pub(crate) title: &'static str,
    pub(crate) overview: &'static str,
    pub(crate) dead_letters: &'static str,
    pub(crate) subscribers: &'static str,
    pub(crate) audit: &'static str,
    pub(crate) sign_in: &'static str,
    pub(crate) sign_out: &'static str,
    pub(crate) name: &'static str,
    pub(crate) password: &'static str,
    pub(crate) wrong_login: &'static str,
    pub(crate) signed_in_as: &'static str,
    pub(crate) viewer: &'static str,
    pub(crate) operator: &'static str,
    pub(crate) parked_now: &'static str,
    pub(crate) outbox: &'static str,
    pub(crate) outbox_oldest: &'static str,
    pub(crate) repair_awaiting: &'static str,
    pub(crate) last_repair: &'static str,
    pub(crate) never: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) class: &'static str,
    pub(crate) event_type: &'static str,
    pub(crate) count: &'static str,
    pub(crate) first_failed: &'static str,
    pub(crate) last_failed: &'static str,
    pub(crate) contract: &'static str,
    pub(crate) attempts: &'static str,
    pub(crate) error: &'static str,
    pub(crate) state: &'static str,
    pub(crate) requeue_group: &'static str,
    pub(crate) requeue_these: &'static str,
    pub(crate) requeue_one: &'static str,
    pub(crate) confirm_requeue: &'static str,
    pub(crate) will_requeue: &'static str,
    pub(crate) cancel: &'static str,
    pub(crate) requeued_done: &'static str,
    pub(crate) stopped_early: &'static str,
    pub(crate) nothing_here: &'static str,
    pub(crate) all: &'static str,
    pub(crate) outage: &'static str,
    pub(crate) queues: &'static str,
    pub(crate) queue: &'static str,
    pub(crate) waiting: &'static str,
    pub(crate) consumers: &'static str,
    pub(crate) broker_unreachable: &'static str,
    pub(crate) matching: &'static str,
    pub(crate) filter: &'static str,
    pub(crate) body: &'static str,
    pub(crate) reveal: &'static str,
    pub(crate) revealed: &'static str,
    pub(crate) history: &'static str,
    pub(crate) received: &'static str,
    pub(crate) version: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) actor: &'static str,
    pub(crate) detail: &'static str,
    pub(crate) search: &'static str,
    pub(crate) search_hint: &'static str,
    pub(crate) products: &'static str,
    pub(crate) updated: &'static str,
    pub(crate) subscriber: &'static str,
    pub(crate) should_be: &'static str,
    pub(crate) skeelo_holds: &'static str,
    pub(crate) facts: &'static str,
    pub(crate) when: &'static str,
    pub(crate) who: &'static str,
    pub(crate) action: &'static str,
    pub(crate) target: &'static str,
    pub(crate) forbidden: &'static str,
    pub(crate) csrf_refused: &'static str,
    pub(crate) not_found: &'static str,
    pub(crate) active: &'static str,
    pub(crate) suspended: &'static str,
    pub(crate) blocked: &'static str,
    pub(crate) cancelled: &'static str,
    pub(crate) awaiting_sync: &'static str,
    pub(crate) viewer_note: &'static str,
}

static EN: Words = Words {
    html_lang: "en",
    title: "Skeelo bridge",
    overview: "Overview",
    dead_letters: "Dead letters",
    subscribers: "Subscribers",
    audit: "Audit",
    sign_in: "Sign in",
    sign_out: "Sign out",
    name: "Name",
    password: "Password",
    wrong_login: "Wrong name or password.",
    signed_in_as: "Signed in as",
    viewer: "viewer",
    operator: "operator",
    parked_now: "Dead letters parked now",
    outbox: "Results waiting for the broker",
    outbox_oldest: "oldest waiting",
    repair_awaiting: "Repair runs awaiting approval",
    last_repair: "Latest drift repair run",
    never: "never",
    reason: "Reason",
    class: "Class",
    event_type: "Type",
    count: "Count",
    first_failed: "First failed",
    last_failed: "Last failed",
    contract: "Contract",
    attempts: "Attempts",
    error: "Error",
    state: "State",
    requeue_group: "Requeue this group",
    requeue_these: "Requeue every letter of this filter",
    requeue_one: "Requeue this letter",
    confirm_requeue: "Confirm the requeue",
    will_requeue: "dead letter(s) match and will be sent back, through the requeue queue (behind new customers' events). Each gets a new result.",
    cancel: "Cancel",
    requeued_done: "dead letter(s) sent back, confirmed by the broker; they get new results.",
    stopped_early: "Stopped early",
    nothing_here: "Nothing here.",
    all: "all",
    outage: "Outage mode: Skeelo does not answer; events wait in their queues, nothing is lost. Since",
    queues: "Queues (as the broker counts them now)",
    queue: "Queue",
    waiting: "Waiting",
    consumers: "Consumers",
    broker_unreachable: "The broker cannot be asked",
    matching: "parked letter(s) match this filter",
    filter: "Filter",
    body: "Message (personal data masked)",
    reveal: "Reveal personal data (recorded in the audit trail)",
    revealed: "Message as received (this reveal is in the audit trail)",
    history: "History",
    received: "Received",
    version: "Version",
    outcome: "Outcome",
    actor: "Actor",
    detail: "Detail",
    search: "Search",
    search_hint: "Contract id, or CPF/CNPJ in any punctuation",
    products: "Products",
    updated: "Updated",
    subscriber: "Subscriber",
    should_be: "Skeelo should hold",
    skeelo_holds: "Skeelo held at the last call",
    facts: "Facts",
    when: "When",
    who: "Who",
    action: "Action",
    target: "What",
    forbidden: "Your account may only read: requeue, purge, restore and reveal are for operators.",
    csrf_refused: "This form has expired or did not come from this console; nothing was done. Reload the page and try again.",
    not_found: "Not found.",
    active: "active",
    suspended: "suspended",
    blocked: "blocked",
    cancelled: "cancelled",
    awaiting_sync: "awaiting sync",
    viewer_note: "Read-only account: actions are for operators.",
};

static PT: Words = Words {
    html_lang: "pt-BR",
    title: "Ponte Skeelo",
    overview: "Visão geral",
    dead_letters: "Mensagens paradas",
    subscribers: "Assinantes",
    audit: "Auditoria",
    sign_in: "Entrar",
    sign_out: "Sair",
    name: "Nome",
    password: "Senha",
    wrong_login: "Nome ou senha incorretos.",
    signed_in_as: "Conectado como",
    viewer: "leitura",
    operator: "operador",
    parked_now: "Mensagens paradas agora",
    outbox: "Resultados aguardando o broker",
    outbox_oldest: "mais antigo aguardando",
    repair_awaiting: "Reparos aguardando aprovação",
    last_repair: "Último reparo de divergências",
    never: "nunca",
    reason: "Motivo",
    class: "Classe",
    event_type: "Tipo",
    count: "Quantidade",
    first_failed: "Primeira falha",
    last_failed: "Última falha",
    contract: "Contrato",
    attempts: "Tentativas",
    error: "Erro",
    state: "Estado",
    requeue_group: "Reenviar este grupo",
    requeue_these: "Reenviar todas as mensagens deste filtro",
    requeue_one: "Reenviar esta mensagem",
    confirm_requeue: "Confirmar o reenvio",
    will_requeue: "mensagem(ns) parada(s) correspondem e serão reenviadas pela fila de reenvio (atrás dos eventos de clientes novos). Cada uma recebe um novo resultado.",
    cancel: "Cancelar",
    requeued_done: "mensagem(ns) reenviada(s), confirmadas pelo broker; recebem novos resultados.",
    stopped_early: "Parou antes do fim",
    nothing_here: "Nada aqui.",
    all: "todos",
    outage: "Modo de indisponibilidade: a Skeelo não responde; os eventos aguardam nas filas, nada se perde. Desde",
    queues: "Filas (como o broker as conta agora)",
    queue: "Fila",
    waiting: "Aguardando",
    consumers: "Consumidores",
    broker_unreachable: "O broker não pôde ser consultado",
    matching: "mensagem(ns) parada(s) correspondem ao filtro",
    filter: "Filtrar",
    body: "Mensagem (dados pessoais mascarados)",
    reveal: "Mostrar dados pessoais (registrado na auditoria)",
    revealed: "Mensagem como chegou (esta consulta está na auditoria)",
    history: "Histórico",
    received: "Recebido",
    version: "Versão",
    outcome: "Resultado",
    actor: "Quem",
    detail: "Detalhe",
    search: "Buscar",
    search_hint: "Id do contrato, ou CPF/CNPJ com qualquer pontuação",
    products: "Produtos",
    updated: "Atualizado",
    subscriber: "Assinante",
    should_be: "A Skeelo deveria ter",
    skeelo_holds: "A Skeelo tinha na última chamada",
    facts: "Fatos",
    when: "Quando",
    who: "Quem",
    action: "Ação",
    target: "O quê",
    forbidden: "Sua conta é só de leitura: reenviar, expurgar, restaurar e mostrar dados pessoais são para operadores.",
    csrf_refused: "Este formulário expirou ou não veio deste console; nada foi feito. Recarregue a página e tente de novo.",
    not_found: "Não encontrado.",
    active: "ativo",
    suspended: "suspenso",
    blocked: "bloqueado",
    cancelled: "cancelado",
    awaiting_sync: "aguardando sincronização",
    viewer_note: "Conta só de leitura: as ações são para operadores.",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_wins_then_the_browser_then_english() {
        assert_eq!(Lang::pick(Some("pt-BR"), Some("en-US")), Lang::PtBr);
        assert_eq!(Lang::pick(Some("en"), Some("pt-BR")), Lang::En);
        assert_eq!(
            Lang::pick(None, Some("pt-BR,pt;q=0.9,en;q=0.8")),
            Lang::PtBr
        );
        assert_eq!(Lang::pick(None, Some("de-DE,en;q=0.5")), Lang::En);
        assert_eq!(Lang::pick(None, Some("fr")), Lang::En);
        assert_eq!(Lang::pick(None, None), Lang::En);
    }

    #[test]
    fn the_languages_differ() {
        assert_ne!(EN.dead_letters, PT.dead_letters);
        assert_eq!(PT.html_lang, "pt-BR");
    }
}
