//! A cache's objects, each kept as its JSON encoding, LZ4-compressed, under a
//! `namespace/name` key.
//!
//! An object that cannot be encoded (or whose encoding no longer decodes) is not dropped
//! and not left stale: its entry says it cannot be read, and [`Store::lookup`] returns
//! [`Lookup::Unreadable`] with the reason, so a runner retries it as a failed reconcile
//! rather than taking it for deleted.
//!
//! A decoded Kubernetes object is mostly fixed-size structs, options and one allocation per
//! string; kept decoded, an AgentTask costs about 2 KB and a Job's cached part about 1.2 KB,
//! twice their encodings. Objects of one kind share most of their text (field names, the
//! namespace, owner and label values), so each is compressed against the same dictionary:
//! the encoding of the first object the store received. Readers get a freshly decoded copy
//! (a few microseconds for one object), so the store holds one compact copy of each object
//! and nothing else.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, RwLock};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::error;

/// What the store keeps of one object.
#[derive(Clone)]
enum Slot {
    Encoded(Arc<[u8]>),
    /// The object could not be encoded; why.
    Unencodable(Arc<str>),
}

/// Encoded objects by key.
type Objects = HashMap<Box<str>, Slot>;

/// What the store has for a reference.
#[derive(Debug)]
pub enum Lookup<K> {
    Found(Arc<K>),
    Missing,
    /// The object is cached but cannot be read (a bug in its type or the cache's encoding).
    Unreadable(String),
}

impl<K> Lookup<K> {
    pub fn found(self) -> Option<Arc<K>> {
        match self {
            Lookup::Found(object) => Some(object),
            Lookup::Missing | Lookup::Unreadable(_) => None,
        }
    }
}

/// The objects of one cache, shared by the cache (the only writer) and every reader.
pub struct Store<K> {
    objects: Arc<RwLock<Objects>>,
    dictionary: Arc<OnceLock<Box<[u8]>>>,
    _kind: PhantomData<fn() -> K>,
}

/// The most of the first encoding kept as the dictionary (LZ4 looks back 64 KiB at most).
const DICTIONARY_BYTES: usize = 16 * 1024;

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            dictionary: self.dictionary.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Self {
            objects: Arc::default(),
            dictionary: Arc::default(),
            _kind: PhantomData,
        }
    }
}

/// The key of an object: `namespace/name`, or `name` for a cluster-scoped object.
pub fn key_of(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_string(),
    }
}

fn reference_of<K: Resource<DynamicType = ()>>(key: &str) -> ObjectRef<K> {
    match key.split_once('/') {
        Some((namespace, name)) => ObjectRef::new(name).within(namespace),
        None => ObjectRef::new(key),
    }
}

impl<K> Store<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    /// The object `reference` names, as cached now (`None` also when it cannot be read: see
    /// [`Store::lookup`] where that matters).
    pub fn get(&self, reference: &ObjectRef<K>) -> Option<Arc<K>> {
        self.lookup(reference).found()
    }

    /// The object `namespace/name`, as cached now.
    pub fn get_named(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let slot = self.slot(namespace, name)?;
        self.decode(&slot).ok()
    }

    /// The object `reference` names, or why it cannot be read.
    pub fn lookup(&self, reference: &ObjectRef<K>) -> Lookup<K> {
        match self.slot(reference.namespace.as_deref(), &reference.name) {
            None => Lookup::Missing,
            Some(slot) => match self.decode(&slot) {
                Ok(object) => Lookup::Found(object),
                Err(err) => Lookup::Unreadable(err),
            },
        }
    }

    /// The object `reference` names, read as `T` (a view of the fields the caller needs).
    pub fn get_as<T: DeserializeOwned>(&self, reference: &ObjectRef<K>) -> Option<T> {
        let slot = self.slot(reference.namespace.as_deref(), &reference.name)?;
        self.decode_as(&slot).ok()
    }

    fn slot(&self, namespace: Option<&str>, name: &str) -> Option<Slot> {
        self.read().get(key_of(namespace, name).as_str()).cloned()
    }

    /// Every cached object (each decoded: for occasional sweeps, not per event).
    pub fn state(&self) -> Vec<Arc<K>> {
        self.iter().collect()
    }

    /// Every cached object, each decoded as the iterator reaches it (so a sweep holds one
    /// decoded object at a time).
    pub fn iter(&self) -> impl Iterator<Item = Arc<K>> + use<K> {
        let decoder = self.clone();
        self.slots()
            .into_iter()
            .filter_map(move |slot| decoder.decode(&slot).ok())
    }

    /// Every cached object read as `T`, a view of the fields a sweep needs (cheaper to
    /// decode than the whole object).
    pub fn scan<T: DeserializeOwned>(&self) -> impl Iterator<Item = T> + use<K, T> {
        let decoder = self.clone();
        self.slots()
            .into_iter()
            .filter_map(move |slot| decoder.decode_as::<T>(&slot).ok())
    }

    fn slots(&self) -> Vec<Slot> {
        self.read().values().cloned().collect()
    }

    /// References to every cached object.
    pub fn refs(&self) -> Vec<ObjectRef<K>> {
        self.read().keys().map(|key| reference_of(key)).collect()
    }

    /// References to the cached objects of `namespace`.
    pub fn refs_in(&self, namespace: &str) -> Vec<ObjectRef<K>> {
        let prefix = format!("{namespace}/");
        self.read()
            .keys()
            .filter(|key| key.starts_with(&prefix))
            .map(|key| reference_of(key))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> Store<K>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    /// Adds or replaces `object` (the cache does; tests may fill a store directly).
    pub fn upsert(&self, object: &K) {
        let meta = object.meta();
        let Some(name) = meta.name.as_deref() else {
            return;
        };
        let key = key_of(meta.namespace.as_deref(), name);
        match serde_json::to_vec(object) {
            Ok(json) => {
                let dictionary = self
                    .dictionary
                    .get_or_init(|| json[..json.len().min(DICTIONARY_BYTES)].into());
                let compressed =
                    lz4_flex::block::compress_prepend_size_with_dict(&json, dictionary);
                self.write()
                    .insert(key.into_boxed_str(), Slot::Encoded(compressed.into()));
            }
            Err(err) => {
                error!(object = %key, error = %err, "cannot encode an object for the cache; it is kept as unreadable");
                let reason = format!("it could not be encoded when cached: {err}");
                self.write()
                    .insert(key.into_boxed_str(), Slot::Unencodable(reason.into()));
            }
        }
    }
}

impl<K> Store<K>
where
    K: Resource<DynamicType = ()>,
{
    /// Removes the object `reference` names.
    pub fn remove(&self, reference: &ObjectRef<K>) {
        let key = key_of(reference.namespace.as_deref(), &reference.name);
        let mut objects = self.write();
        objects.remove(key.as_str());
        if crate::runner::oversized(objects.capacity(), objects.len()) {
            let len = objects.len();
            objects.shrink_to(len * 2);
        }
    }
}

impl<K> Store<K> {
    fn decode_as<T: DeserializeOwned>(&self, slot: &Slot) -> Result<T, String> {
        let bytes = match slot {
            Slot::Encoded(bytes) => bytes,
            Slot::Unencodable(reason) => return Err(reason.to_string()),
        };
        let dictionary = self.dictionary.get().map(AsRef::as_ref).unwrap_or_default();
        lz4_flex::block::decompress_size_prepended_with_dict(bytes, dictionary)
            .map_err(|err| format!("its cached encoding does not decompress: {err}"))
            .and_then(|json| {
                serde_json::from_slice(&json)
                    .map_err(|err| format!("its cached encoding does not decode: {err}"))
            })
            .inspect_err(|err| error!(error = %err, "a cached object cannot be read"))
    }

    fn decode(&self, slot: &Slot) -> Result<Arc<K>, String>
    where
        K: DeserializeOwned,
    {
        self.decode_as::<K>(slot).map(Arc::new)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        self.objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A kind for tests whose encoding fails, or does not decode, on demand.
#[cfg(test)]
pub(crate) mod flaky {
    use kube::Resource;
    use serde::Serialize;

    /// A kind whose encoding fails, or does not decode, on demand.
    #[derive(Clone, Debug, serde::Deserialize, PartialEq)]
    pub struct Flaky {
        pub metadata: kube::api::ObjectMeta,
        pub mode: Mode,
    }

    #[derive(Clone, Copy, Debug, serde::Deserialize, PartialEq)]
    pub enum Mode {
        Fine,
        Unencodable,
        Undecodable,
    }

    impl Serialize for Flaky {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeStruct};
            let mut out = serializer.serialize_struct("Flaky", 2)?;
            out.serialize_field("metadata", &self.metadata)?;
            match self.mode {
                Mode::Fine => out.serialize_field("mode", "Fine")?,
                Mode::Unencodable => return Err(S::Error::custom("this one never encodes")),
                Mode::Undecodable => out.serialize_field("mode", &42)?,
            }
            out.end()
        }
    }

    impl Resource for Flaky {
        type DynamicType = ();
        type Scope = k8s_openapi::NamespaceResourceScope;
        fn kind(_: &()) -> std::borrow::Cow<'_, str> {
            "Flaky".into()
        }
        fn group(_: &()) -> std::borrow::Cow<'_, str> {
            "test.recac.io".into()
        }
        fn version(_: &()) -> std::borrow::Cow<'_, str> {
            "v1".into()
        }
        fn plural(_: &()) -> std::borrow::Cow<'_, str> {
            "flakies".into()
        }
        fn meta(&self) -> &kube::api::ObjectMeta {
            &self.metadata
        }
        fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
            &mut self.metadata
        }
    }

    pub fn flaky(mode: Mode) -> Flaky {
        let metadata = kube::api::ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("f".into()),
            ..Default::default()
        };
        Flaky { metadata, mode }
    }
}

#[cfg(test)]
mod tests {
    use super::flaky::{Flaky, Mode, flaky};
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(ns: &str, name: &str, value: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm.data = Some([("k".to_string(), value.to_string())].into());
        cm
    }

    #[test]
    fn objects_round_trip_and_are_found_by_reference_and_namespace() {
        let store: Store<ConfigMap> = Store::default();
        store.upsert(&object("a", "1", "x"));
        store.upsert(&object("a", "2", "y"));
        store.upsert(&object("b", "1", "z"));
        store.upsert(&object("a", "1", "x2"));
        assert_eq!(store.len(), 3);
        let got = store.get(&ObjectRef::new("1").within("a")).expect("cached");
        assert_eq!(*got, object("a", "1", "x2"));
        assert!(store.get(&ObjectRef::new("1").within("c")).is_none());
        let view: serde_json::Value = store
            .get_as(&ObjectRef::new("1").within("a"))
            .expect("cached");
        assert_eq!(view["data"]["k"], "x2");
        let mut in_a: Vec<String> = store.refs_in("a").iter().map(|r| r.name.clone()).collect();
        in_a.sort();
        assert_eq!(in_a, ["1", "2"]);
        store.remove(&ObjectRef::new("2").within("a"));
        assert_eq!(store.state().len(), 2);
        assert_eq!(store.refs().len(), 2);
    }

    #[test]
    fn an_object_that_cannot_be_encoded_or_decoded_is_unreadable_never_missing_or_stale() {
        let store: Store<Flaky> = Store::default();
        let reference = ObjectRef::new("f").within("ns");
        store.upsert(&flaky(Mode::Fine));
        assert!(matches!(store.lookup(&reference), Lookup::Found(_)));

        store.upsert(&flaky(Mode::Unencodable));
        match store.lookup(&reference) {
            Lookup::Unreadable(reason) => {
                assert!(reason.contains("never encodes"), "{reason}")
            }
            other => panic!("the stale copy must not be served: {other:?}"),
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.refs().len(), 1, "it is still known to be there");

        store.upsert(&flaky(Mode::Undecodable));
        match store.lookup(&reference) {
            Lookup::Unreadable(reason) => assert!(reason.contains("does not decode"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(store.get(&reference).is_none());

        store.upsert(&flaky(Mode::Fine));
        assert!(matches!(store.lookup(&reference), Lookup::Found(_)));
        store.remove(&reference);
        assert!(matches!(store.lookup(&reference), Lookup::Missing));
    }

    #[test]
    fn similar_objects_are_kept_in_a_fraction_of_their_encoding() {
        let store: Store<ConfigMap> = Store::default();
        let mut json = 0;
        for i in 0..100 {
            let mut cm = object("a-namespace-of-some-length", &format!("task-{i:05}"), "v");
            cm.data = Some(
                [
                    (
                        "repository".to_string(),
                        "https://git.example.com/org/repo.git".to_string(),
                    ),
                    (
                        "message".to_string(),
                        format!("created Job task-{i:05}-a1 for attempt 1"),
                    ),
                ]
                .into(),
            );
            json += serde_json::to_vec(&cm).expect("encodes").len();
            store.upsert(&cm);
            assert_eq!(
                *store
                    .get(&reference_of(&format!(
                        "a-namespace-of-some-length/task-{i:05}"
                    )))
                    .expect("cached"),
                cm
            );
        }
        let kept: usize = store
            .read()
            .values()
            .map(|slot| match slot {
                Slot::Encoded(bytes) => bytes.len(),
                Slot::Unencodable(_) => 0,
            })
            .sum();
        assert!(kept * 3 < json, "kept {kept} bytes of {json}");
    }
}
