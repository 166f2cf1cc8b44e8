//! The shape both seams (runtime and firewall) use for "which backend, and why": chosen once at
//! start-up, logged, shown by `plan` and recorded for the later actions.
use serde::Serialize;

/// A backend and why it was chosen.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Selection<K> {
    pub kind: K,
    pub reason: String,
}

impl<K> Selection<K> {
    pub fn new(kind: K, reason: impl Into<String>) -> Selection<K> {
        Selection {
            kind,
            reason: reason.into(),
        }
    }
}

/// The name type of a seam's registry: a `Copy` handle on a backend's `'static` registry entry
/// (a `dyn` trait with `fn name(&self) -> &'static str`), compared, hashed, printed and
/// serialised by that name. Both seams (`RuntimeKind`, `FirewallKind`) are made by it, so they
/// behave alike.
#[macro_export]
macro_rules! registry_kind {
    ($(#[$meta:meta])* $vis:vis struct $kind:ident(dyn $entry:path);) => {
        $(#[$meta])*
        #[derive(Clone, Copy)]
        $vis struct $kind(pub &'static dyn $entry);

        impl $kind {
            /// The backend's name.
            pub fn as_str(self) -> &'static str {
                self.0.name()
            }

            /// The registry entry.
            pub fn backend(self) -> &'static dyn $entry {
                self.0
            }
        }

        impl PartialEq for $kind {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl Eq for $kind {}

        impl ::std::hash::Hash for $kind {
            fn hash<H: ::std::hash::Hasher>(&self, state: &mut H) {
                ::std::hash::Hash::hash(self.as_str(), state)
            }
        }

        impl ::std::fmt::Debug for $kind {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::fmt::Display for $kind {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $kind {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}
