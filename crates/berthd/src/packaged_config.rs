//! Keeps `packaging/berth.toml`, the default config the package installs as
//! `/etc/berth/berth.toml`, in agreement with the code: every key the loader accepts is in it,
//! every value it shows is the built-in default, and it loads with the real loader — as it is,
//! and with every commented-out key switched on.
//!
//! The keys are taken from the config types themselves (see [`keys`]), so a key added to
//! `config.rs` without a line in the packaged file fails here.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

use crate::config::{self, Config, Overrides};

fn packaged() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/berth.toml")
}

/// The dotted path of every leaf key of `T` (`data_dir`, `api.listen`, ...).
///
/// `T` is deserialized from a deserializer that offers every field each struct asks for and a
/// placeholder value for each leaf, recording the leaves' paths on the way.
fn keys<'de, T: serde::Deserialize<'de>>() -> Vec<String> {
    let out = RefCell::new(Vec::new());
    if let Err(e) = T::deserialize(Schema {
        path: String::new(),
        out: &out,
    }) {
        panic!("cannot list the config keys: {e}");
    }
    out.into_inner()
}

struct Schema<'a> {
    path: String,
    out: &'a RefCell<Vec<String>>,
}

impl Schema<'_> {
    fn leaf(&self) {
        self.out.borrow_mut().push(self.path.clone());
    }
}

macro_rules! leaves {
    ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
            self.leaf();
            v.$visit($value)
        }
    )*};
}

impl<'de> Deserializer<'de> for Schema<'_> {
    type Error = de::value::Error;

    /// A self-describing leaf (a size takes `"64MiB"` or a number): offered a number.
    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.leaf();
        v.visit_u64(0)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_map(Fields {
            schema: self,
            fields: fields.iter(),
            current: "",
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_some(self)
    }

    /// A list leaf: offered an empty list.
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        self.leaf();
        v.visit_seq(de::value::SeqDeserializer::<_, Self::Error>::new(
            std::iter::empty::<String>(),
        ))
    }

    leaves! {
        deserialize_bool => visit_bool(false),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        // A string that every string-typed key parses: a duration, a path, a name.
        deserialize_str => visit_str("0s"),
        deserialize_string => visit_str("0s"),
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct newtype_struct tuple tuple_struct map
        enum identifier ignored_any
    }
}

struct Fields<'a> {
    schema: Schema<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(name) = self.fields.next() else {
            return Ok(None);
        };
        self.current = name;
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let path = if self.schema.path.is_empty() {
            self.current.to_owned()
        } else {
            format!("{}.{}", self.schema.path, self.current)
        };
        seed.deserialize(Schema {
            path,
            out: self.schema.out,
        })
    }
}

/// The file with every commented-out key (`# key = value`) switched on; prose comments stay.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads `path` with berthd's own loader and builds the configuration as root would.
fn load(path: &Path) -> Config {
    let (file, _) = config::read_file(Some(path)).unwrap();
    Config::build(file, None, &Overrides::default(), true).unwrap()
}

fn defaults() -> Config {
    Config::build(config::File::default(), None, &Overrides::default(), true).unwrap()
}

/// Asserts two configurations are equal, naming the fields that differ.
fn assert_same(got: &Config, want: &Config, what: &str) {
    let (got, want) = (format!("{got:?}"), format!("{want:?}"));
    let fields = |s: &str| s.split(", ").map(str::to_owned).collect::<Vec<_>>();
    let differ: Vec<String> = fields(&got)
        .into_iter()
        .zip(fields(&want))
        .filter(|(g, w)| g != w)
        .map(|(g, w)| format!("{g} (default: {w})"))
        .collect();
    assert!(
        got == want,
        "{what}: values differ from the built-in defaults: {differ:?}"
    );
}

#[test]
fn the_key_walker_sees_nested_keys() {
    let keys = keys::<config::File>();
    for k in [
        "data_dir",
        "api.listen",
        "db.slow_op_threshold",
        "fault.db_delay",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
    }
    assert!(!keys.iter().any(|x| x == "api"), "sections are not keys");
}

#[test]
fn every_config_key_is_in_the_packaged_file() {
    let text = std::fs::read_to_string(packaged()).unwrap();
    let table: toml::Table = toml::from_str(&uncommented(&text)).unwrap();
    let missing: Vec<String> = keys::<config::File>()
        .into_iter()
        .filter(|k| {
            let mut at = Some(&table);
            let mut parts = k.split('.').peekable();
            while let Some(part) = parts.next() {
                let Some(t) = at else { return true };
                match (t.get(part), parts.peek()) {
                    (None, _) => return true,
                    (Some(_), None) => return false,
                    (Some(v), Some(_)) => at = v.as_table(),
                }
            }
            true
        })
        .collect();
    assert!(
        missing.is_empty(),
        "packaging/berth.toml lacks these keys (add each, commented out, with its default and \
         a line saying what it does): {missing:?}"
    );
}

#[test]
fn the_packaged_file_loads_and_shows_the_defaults() {
    // As installed: nothing switched on, so it changes nothing.
    assert_same(
        &load(&packaged()),
        &defaults(),
        "packaging/berth.toml as installed",
    );
    // Every commented-out key switched on: the real loader accepts each one (unknown keys are
    // refused), and each value shown is the default, except the supervisor path, whose
    // default is "beside berthd" rather than a fixed path.
    let dir = tempfile::tempdir().unwrap();
    let on = dir.path().join("berth.toml");
    std::fs::write(
        &on,
        uncommented(&std::fs::read_to_string(packaged()).unwrap()),
    )
    .unwrap();
    let mut all = load(&on);
    assert_eq!(all.shim.take(), Some(PathBuf::from("/usr/bin/berth-shim")));
    assert_same(
        &all,
        &defaults(),
        "packaging/berth.toml's commented-out values",
    );
}
