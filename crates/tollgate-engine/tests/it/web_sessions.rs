//! The dashboard's sign-in records, on every store at hand: a portal link works once and only
//! before it expires (also when two servers on one PostgreSQL database redeem it at once), a
//! redeemed link starts its session in the same commit, a session ends once, and staff end
//! every session of one account at once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::ids::AccountId;
use tollgate_core::Timestamp;
use tollgate_engine::{AdminCmd, AdminReply, Engine};
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{BillingMode, PortalLink, StoreError, WebSession};

const T0: i64 = 1_780_272_000_000;

fn engine(db: &TestDb, clock: &Arc<AtomicI64>) -> Engine {
    let clock = clock.clone();
    Engine::start(
        db.open().unwrap(),
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
    )
    .unwrap()
}

fn session(id: &str) -> WebSession {
    WebSession {
        id_sha256: id.to_string(),
        account: None,
        key_id: None,
        csrf: format!("csrf-{id}"),
        created_at: Timestamp(T0),
        expires_at: Timestamp(T0 + 3_600_000),
        ended_at: None,
    }
}

async fn redeem(engine: &Engine, token: &str, id: &str) -> Option<AccountId> {
    match engine
        .admin(AdminCmd::RedeemPortalLink {
            token_sha256: token.to_string(),
            session: session(id),
        })
        .await
        .unwrap()
    {
        AdminReply::SignedIn(account) => account,
        other => panic!("{other:?}"),
    }
}

async fn stored(engine: &Engine, id: &str) -> Option<WebSession> {
    let id = id.to_string();
    engine.read(move |r| r.web_session(&id)).await.unwrap()
}

#[tokio::test]
async fn a_portal_link_works_once_before_it_expires_and_starts_its_session() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let e = engine(&db, &clock);
        let acme = AccountId::parse("acme").unwrap();
        e.admin(AdminCmd::CreateAccount {
            username: acme.clone(),
            billing: BillingMode::Prepaid,
        })
        .await
        .unwrap();
        let link = |token: &str, ttl: i64| PortalLink {
            token_sha256: token.to_string(),
            account: acme.clone(),
            created_at: Timestamp(T0),
            expires_at: Timestamp(T0 + ttl),
        };
        e.admin(AdminCmd::MintPortalLink(link("t1", 600_000)))
            .await
            .unwrap();
        e.admin(AdminCmd::MintPortalLink(link("t2", 600_000)))
            .await
            .unwrap();
        // A token is never minted twice.
        let again = e.admin(AdminCmd::MintPortalLink(link("t1", 600_000))).await;
        assert!(
            matches!(
                again,
                Err(tollgate_engine::EngineError::Store(
                    StoreError::AlreadyExists(_)
                ))
            ),
            "{backend:?}: {again:?}"
        );

        assert_eq!(
            redeem(&e, "t1", "s1").await,
            Some(acme.clone()),
            "{backend:?}"
        );
        let s1 = stored(&e, "s1").await.expect("the session was stored");
        assert_eq!(s1.account, Some(acme.clone()), "the link's account");
        assert_eq!(s1.csrf, "csrf-s1");
        // Used: refused, and no session is stored for the second try.
        assert_eq!(redeem(&e, "t1", "s2").await, None, "{backend:?}");
        assert_eq!(stored(&e, "s2").await, None);
        // Unknown: refused.
        assert_eq!(redeem(&e, "nope", "s3").await, None);
        // Expired: refused at its expiry.
        clock.store(T0 + 600_000, Ordering::SeqCst);
        assert_eq!(redeem(&e, "t2", "s4").await, None, "{backend:?}");
        assert_eq!(stored(&e, "s4").await, None);

        // A session ends once.
        let end = |id: &str| AdminCmd::EndWebSession {
            id_sha256: id.to_string(),
        };
        assert_eq!(e.admin(end("s1")).await.unwrap(), AdminReply::Ended(true));
        assert_eq!(e.admin(end("s1")).await.unwrap(), AdminReply::Ended(false));
        assert_eq!(
            stored(&e, "s1").await.unwrap().ended_at,
            Some(Timestamp(T0 + 600_000))
        );
        e.admin(AdminCmd::StartWebSession(session("op")))
            .await
            .unwrap();
        assert_eq!(stored(&e, "op").await.unwrap().account, None);
        e.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn staff_end_every_session_of_one_account_and_only_its() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let e = engine(&db, &clock);
        let (acme, other) = (
            AccountId::parse("acme").unwrap(),
            AccountId::parse("globex").unwrap(),
        );
        for a in [&acme, &other] {
            e.admin(AdminCmd::CreateAccount {
                username: a.clone(),
                billing: BillingMode::Prepaid,
            })
            .await
            .unwrap();
        }
        let of = |id: &str, account: &AccountId| WebSession {
            account: Some(account.clone()),
            ..session(id)
        };
        for s in [
            of("acme-1", &acme),
            of("acme-2", &acme),
            of("globex-1", &other),
            session("console"),
        ] {
            e.admin(AdminCmd::StartWebSession(s)).await.unwrap();
        }
        // One of acme's was signed out already: it keeps the time it ended.
        e.admin(AdminCmd::StartWebSession(of("acme-old", &acme)))
            .await
            .unwrap();
        e.admin(AdminCmd::EndWebSession {
            id_sha256: "acme-old".into(),
        })
        .await
        .unwrap();

        clock.store(T0 + 60_000, Ordering::SeqCst);
        let end_acme = || AdminCmd::EndAccountSessions {
            account: acme.clone(),
        };
        assert_eq!(
            e.admin(end_acme()).await.unwrap(),
            AdminReply::SessionsEnded(2),
            "{backend:?}"
        );
        for id in ["acme-1", "acme-2"] {
            assert_eq!(
                stored(&e, id).await.unwrap().ended_at,
                Some(Timestamp(T0 + 60_000)),
                "{backend:?}: {id}"
            );
        }
        assert_eq!(
            stored(&e, "acme-old").await.unwrap().ended_at,
            Some(Timestamp(T0)),
            "{backend:?}: an ended session is not ended again"
        );
        for id in ["globex-1", "console"] {
            assert_eq!(
                stored(&e, id).await.unwrap().ended_at,
                None,
                "{backend:?}: {id} is still signed in"
            );
        }
        // Nothing left to end.
        assert_eq!(
            e.admin(end_acme()).await.unwrap(),
            AdminReply::SessionsEnded(0),
            "{backend:?}"
        );
        e.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn two_servers_redeeming_one_link_at_once_sign_in_once() {
    let Some(backend) = backends()
        .into_iter()
        .find(|b| matches!(b, Backend::Postgres(_)))
    else {
        eprintln!("skipped: TOLLGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let db = TestDb::new(&backend);
    let clock = Arc::new(AtomicI64::new(T0));
    let a = engine(&db, &clock);
    let b = engine(&db, &clock);
    let acme = AccountId::parse("acme").unwrap();
    a.admin(AdminCmd::CreateAccount {
        username: acme.clone(),
        billing: BillingMode::Prepaid,
    })
    .await
    .unwrap();
    for round in 0..20 {
        let token = format!("token-{round}");
        a.admin(AdminCmd::MintPortalLink(PortalLink {
            token_sha256: token.clone(),
            account: acme.clone(),
            created_at: Timestamp(T0),
            expires_at: Timestamp(T0 + 600_000),
        }))
        .await
        .unwrap();
        let (sa, sb) = (format!("a-{round}"), format!("b-{round}"));
        let (x, y) = tokio::join!(redeem(&a, &token, &sa), redeem(&b, &token, &sb));
        assert_eq!(
            usize::from(x.is_some()) + usize::from(y.is_some()),
            1,
            "round {round}: exactly one server signs in ({x:?}, {y:?})"
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
