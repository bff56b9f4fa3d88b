//! A cache's objects, each kept as its JSON encoding, LZ4-compressed, under a
//! `namespace/name` key.
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

/// Encoded objects by key.
type Objects = HashMap<Box<str>, Arc<[u8]>>;

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
    /// The object `reference` names, as cached now.
    pub fn get(&self, reference: &ObjectRef<K>) -> Option<Arc<K>> {
        self.get_named(reference.namespace.as_deref(), &reference.name)
    }

    /// The object `namespace/name`, as cached now.
    pub fn get_named(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let encoded = self.encoding(namespace, name)?;
        self.decode(&encoded)
    }

    /// The object `reference` names, read as `T` (a view of the fields the caller needs).
    pub fn get_as<T: DeserializeOwned>(&self, reference: &ObjectRef<K>) -> Option<T> {
        let encoded = self.encoding(reference.namespace.as_deref(), &reference.name)?;
        self.decode_as(&encoded)
    }

    fn encoding(&self, namespace: Option<&str>, name: &str) -> Option<Arc<[u8]>> {
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
        self.encodings()
            .into_iter()
            .filter_map(move |bytes| decoder.decode(&bytes))
    }

    /// Every cached object read as `T`, a view of the fields a sweep needs (cheaper to
    /// decode than the whole object).
    pub fn scan<T: DeserializeOwned>(&self) -> impl Iterator<Item = T> + use<K, T> {
        let decoder = self.clone();
        self.encodings()
            .into_iter()
            .filter_map(move |bytes| decoder.decode_as::<T>(&bytes))
    }

    fn encodings(&self) -> Vec<Arc<[u8]>> {
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
                self.write().insert(key.into_boxed_str(), compressed.into());
            }
            Err(err) => {
                error!(object = %key, error = %err, "cannot encode an object for the cache")
            }
        }
    }

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
    fn decode_as<T: DeserializeOwned>(&self, bytes: &[u8]) -> Option<T> {
        let dictionary = self.dictionary.get().map(AsRef::as_ref).unwrap_or_default();
        let result = lz4_flex::block::decompress_size_prepended_with_dict(bytes, dictionary)
            .map_err(|err| err.to_string())
            .and_then(|json| serde_json::from_slice(&json).map_err(|err| err.to_string()));
        match result {
            Ok(object) => Some(object),
            Err(err) => {
                error!(error = %err, "a cached object does not decode; it is skipped");
                None
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Option<Arc<K>>
    where
        K: DeserializeOwned,
    {
        self.decode_as::<K>(bytes).map(Arc::new)
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

#[cfg(test)]
mod tests {
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
        let kept: usize = store.read().values().map(|v| v.len()).sum();
        assert!(kept * 3 < json, "kept {kept} bytes of {json}");
    }
}
