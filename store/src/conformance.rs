//! One behavioural suite every `VectorStore` must pass.

use super::*;
use std::collections::HashSet;

const DIMENSION: usize = 16;
const POINTS: usize = 10_000;
const BRANDS: [&str; 3] = ["acme", "globex", "initech"];
const SOURCES: [&str; 4] = ["x", "reddit", "news", "chatbot"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }

    fn vector(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIMENSION).map(|_| self.unit()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

fn point(rng: &mut Rng, i: usize) -> PointRecord {
    let payload = json!({
        "signal_id": format!("s{i}"),
        "brand": BRANDS[i % BRANDS.len()],
        "source": SOURCES[(i / 3) % SOURCES.len()],
        "ts": 1_700_000_000_000i64 + (i as i64) * 60_000,
        "text": format!("signal {i}"),
    });
    let Value::Object(payload) = payload else {
        unreachable!()
    };
    PointRecord {
        id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("point-{i}").as_bytes()),
        vector: Some(rng.vector()),
        payload,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs the suite on a fresh store from `open`; `open` is called again on
/// the same storage to check that data outlives the handle.
pub async fn run<S: VectorStore>(open: impl Fn() -> S) {
    let store = open();
    // A fresh name, so a shared server's leftovers cannot interfere.
    let name = &format!("conformance-{}", Uuid::new_v4().simple());
    store.ensure_collection(name, DIMENSION).await.unwrap();
    store.ensure_collection(name, DIMENSION).await.unwrap();
    let listed = store.collections().await.unwrap();
    assert!(listed.contains(&(name.clone(), DIMENSION)), "{listed:?}");
    assert!(matches!(
        store.ensure_collection(name, DIMENSION + 1).await,
        Err(StoreError::Dimension { .. })
    ));

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let points: Vec<PointRecord> = (0..POINTS).map(|i| point(&mut rng, i)).collect();
    for chunk in points.chunks(500) {
        store.upsert(name, chunk.to_vec()).await.unwrap();
    }
    let everything = SignalFilter::default();
    assert_eq!(store.count(name, &everything).await.unwrap(), POINTS);

    // Writing the same ids again replaces, never duplicates.
    let mut again: Vec<PointRecord> = points[..1000].to_vec();
    for p in &mut again {
        p.payload.insert("text".into(), json!("rewritten"));
    }
    store.upsert(name, again).await.unwrap();
    assert_eq!(store.count(name, &everything).await.unwrap(), POINTS);
    let fetched = store.retrieve(name, &[points[3].id]).await.unwrap();
    assert_eq!(fetched[0].payload["text"], "rewritten");
    let stored = fetched[0].vector.as_ref().unwrap();
    assert!(dot(stored, points[3].vector.as_ref().unwrap()) > 0.9999);

    // Filtered search agrees with brute force over the same data.
    let filters = [
        everything.clone(),
        SignalFilter {
            brand: Some("globex".into()),
            ..Default::default()
        },
        SignalFilter {
            brand: Some("acme".into()),
            sources: vec!["reddit".into(), "news".into()],
            ..Default::default()
        },
        SignalFilter {
            sources: vec!["chatbot".into()],
            ts_from: Some(1_700_000_000_000 + 2_000 * 60_000),
            ts_to: Some(1_700_000_000_000 + 4_000 * 60_000),
            ..Default::default()
        },
    ];
    for (k, filter) in filters.iter().enumerate() {
        let query = rng.vector();
        let hits = store
            .search(name, query.clone(), filter, 10, true)
            .await
            .unwrap();
        let mut expected: Vec<(f32, Uuid)> = points
            .iter()
            .filter(|p| filter.matches(&p.payload))
            .map(|p| (dot(&query, p.vector.as_ref().unwrap()), p.id))
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0));
        let expected: Vec<Uuid> = expected.iter().take(10).map(|(_, id)| *id).collect();
        let got: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
        assert_eq!(got, expected, "filter {k}");
        for hit in &hits {
            assert!(filter.matches(hit.payload.as_ref().unwrap()), "filter {k}");
        }
        let matching = points.iter().filter(|p| filter.matches(&p.payload)).count();
        assert_eq!(
            store.count(name, filter).await.unwrap(),
            matching,
            "filter {k}"
        );
    }

    // Scrolling visits every point once.
    let mut seen = HashSet::new();
    let mut after = None;
    loop {
        let (page, next) = store
            .scroll(name, &everything, after, 1000, false)
            .await
            .unwrap();
        for record in page {
            assert!(seen.insert(record.id));
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), POINTS);

    // Setting payload keys keeps the other keys and the vector, and the new
    // keys filter like any other.
    let labelled: Vec<(Uuid, Map<String, Value>)> = points[..300]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let Value::Object(keys) = json!({"cluster": (i % 3) as i64, "run": "r1"}) else {
                unreachable!()
            };
            (p.id, keys)
        })
        .collect();
    store.set_payload(name, labelled).await.unwrap();
    let fetched = store.retrieve(name, &[points[4].id]).await.unwrap();
    assert_eq!(fetched[0].payload["cluster"], 1);
    assert_eq!(fetched[0].payload["signal_id"], "s4");
    assert!(
        dot(
            fetched[0].vector.as_ref().unwrap(),
            points[4].vector.as_ref().unwrap()
        ) > 0.9999
    );
    let cluster_two = SignalFilter {
        fields: vec![
            ("cluster".into(), FieldValue::Integer(2)),
            ("run".into(), FieldValue::Keyword("r1".into())),
        ],
        ..Default::default()
    };
    assert_eq!(store.count(name, &cluster_two).await.unwrap(), 100);
    let unknown = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"never stored");
    assert!(
        store
            .set_payload(name, vec![(unknown, Map::new())])
            .await
            .is_err(),
        "setting the payload of a missing point must fail"
    );
    assert_eq!(store.count(name, &everything).await.unwrap(), POINTS);

    // Rejected writes store nothing.
    let mut bad = point(&mut rng, POINTS + 1);
    bad.vector.as_mut().unwrap()[0] = f32::NAN;
    assert!(matches!(
        store
            .upsert(name, vec![point(&mut rng, POINTS + 2), bad])
            .await,
        Err(StoreError::InvalidPoint { .. })
    ));
    let mut short = point(&mut rng, POINTS + 3);
    short.vector.as_mut().unwrap().pop();
    assert!(matches!(
        store.upsert(name, vec![short]).await,
        Err(StoreError::Dimension { .. })
    ));
    assert_eq!(store.count(name, &everything).await.unwrap(), POINTS);

    // Deleting by filter and by id.
    let globex = SignalFilter {
        brand: Some("globex".into()),
        ..Default::default()
    };
    let globex_count = points.iter().filter(|p| globex.matches(&p.payload)).count();
    store.delete(name, &globex).await.unwrap();
    assert_eq!(store.count(name, &globex).await.unwrap(), 0);
    store.delete_ids(name, &[points[0].id]).await.unwrap();
    let remaining = POINTS - globex_count - 1;
    assert_eq!(store.count(name, &everything).await.unwrap(), remaining);
    assert!(
        store.delete(name, &everything).await.is_err(),
        "an empty filter must not wipe a collection"
    );

    // The data outlives the handle.
    drop(store);
    let reopened = open();
    reopened.ensure_collection(name, DIMENSION).await.unwrap();
    assert_eq!(reopened.count(name, &everything).await.unwrap(), remaining);
    let fetched = reopened.retrieve(name, &[points[3].id]).await.unwrap();
    assert_eq!(fetched[0].payload["text"], "rewritten");
    assert!(matches!(
        reopened.count("no-such-collection", &everything).await,
        Err(StoreError::NoCollection(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || EmbeddedStore::open(&root).unwrap()).await;
}

/// A copy into `target` stopped after three pages goes on from where it
/// stopped; a repeat from the start overwrites rather than duplicates; the
/// copies hold the source's vectors and payloads.
async fn copies_resume_and_repeat(target: &dyn VectorStore) {
    let dir = tempfile::tempdir().unwrap();
    let source = EmbeddedStore::open(dir.path()).unwrap();
    let name = &format!("copy-{}", Uuid::new_v4().simple());
    source.ensure_collection(name, DIMENSION).await.unwrap();
    let mut rng = Rng(0x5eed);
    let points: Vec<PointRecord> = (0..1000).map(|i| point(&mut rng, i)).collect();
    source.upsert(name, points.clone()).await.unwrap();
    let everything = SignalFilter::default();

    let (mut pages, mut place) = (0, None);
    let stopped = copy_collection(&source, target, (name, DIMENSION), None, 100, |_, next| {
        pages += 1;
        place = next;
        if pages == 3 {
            Err(StoreError::Backend("stopped on purpose".into()))
        } else {
            Ok(())
        }
    })
    .await;
    assert!(stopped.is_err());
    assert_eq!(target.count(name, &everything).await.unwrap(), 300);
    let rest = copy_collection(
        &source,
        target,
        (name, DIMENSION),
        place,
        100,
        |_, _| Ok(()),
    )
    .await
    .unwrap();
    assert_eq!(rest, 700);
    assert_eq!(target.count(name, &everything).await.unwrap(), 1000);
    let again = copy_collection(&source, target, (name, DIMENSION), None, 64, |_, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(again, 1000);
    assert_eq!(target.count(name, &everything).await.unwrap(), 1000);

    let ids: Vec<Uuid> = points.iter().step_by(97).map(|p| p.id).collect();
    let copied = target.retrieve(name, &ids).await.unwrap();
    let original = source.retrieve(name, &ids).await.unwrap();
    assert_eq!(copied.len(), ids.len());
    for (a, b) in original.iter().zip(&copied) {
        assert_eq!((a.id, &a.payload), (b.id, &b.payload));
        let (va, vb) = (a.vector.as_ref().unwrap(), b.vector.as_ref().unwrap());
        assert!(dot(va, vb) > 0.99999, "{}", a.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_between_embedded_stores_resume_and_repeat() {
    let dir = tempfile::tempdir().unwrap();
    copies_resume_and_repeat(&EmbeddedStore::open(dir.path()).unwrap()).await;
}

fn remote_options(url: String, layout: u32) -> RemoteOptions {
    RemoteOptions {
        url,
        api_key: std::env::var("QDRANT_API_KEY").ok(),
        shard_number: layout,
        replication_factor: layout,
        write_consistency_factor: layout,
        attempts: 3,
        timeout: std::time::Duration::from_secs(10),
    }
}

/// One real Qdrant node (`shared/tools/qdrant`), started for the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_store_conforms_on_one_node() {
    let node = tokio::task::spawn_blocking(pulse_testkit::qdrant::QdrantNode::start)
        .await
        .unwrap()
        .unwrap();
    let options = remote_options(node.grpc_url(), 1);
    let store = RemoteStore::connect(options.clone()).unwrap();
    assert_eq!(store.server_version().await.unwrap(), TESTED_QDRANT);
    assert_eq!(pulse_testkit::qdrant::QDRANT_VERSION, TESTED_QDRANT);
    copies_resume_and_repeat(&RemoteStore::connect(options.clone()).unwrap()).await;
    run(move || RemoteStore::connect(options.clone()).unwrap()).await;
    drop(node);
}

/// Three real nodes in cluster mode; collections of 2 shards × 2 replicas,
/// writes acknowledged by both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_store_conforms_on_a_cluster() {
    let cluster = tokio::task::spawn_blocking(|| pulse_testkit::qdrant::QdrantCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let options = remote_options(cluster.grpc_url(), 2);
    run(move || RemoteStore::connect(options.clone()).unwrap()).await;
    drop(cluster);
}

/// Also against a server of the caller's when `QDRANT_URL` names one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_store_conforms_on_a_given_server() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("not run: QDRANT_URL names no server of your own (the tests above start theirs)");
        return;
    };
    let options = remote_options(url, 1);
    run(move || RemoteStore::connect(options.clone()).unwrap()).await;
}
