//! The store's list of images (`index.json`): pure data and the rules for adding, finding and
//! removing images, kept apart from the files so they can be tested without a disk.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// One image: its config digest (the image ID, as `docker images` and `crictl images` show
/// it), the names it goes by, and its layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub id: Digest,
    /// Full references with a tag, e.g. `docker.io/library/nginx:1.27`.
    #[serde(default)]
    pub names: BTreeSet<String>,
    /// `repository@manifest-digest` for images pulled from (or loaded with) a manifest.
    #[serde(default)]
    pub repo_digests: BTreeSet<String>,
    /// Manifest blobs kept for this image.
    #[serde(default)]
    pub manifests: BTreeSet<Digest>,
    /// The labs the image was loaded or pulled for; `None`: every lab.
    #[serde(default)]
    pub labs: Option<BTreeSet<String>>,
    /// Layers, base first.
    pub layers: Vec<LayerRef>,
    /// The image's content size (config and compressed layers), as containerd reports it.
    pub size: u64,
    /// When the store got it.
    pub added: jiff::Timestamp,
}

/// A layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRef {
    /// The digest of the uncompressed layer tar.
    pub diff_id: Digest,
    /// The name of the unpacked directory (this layer and all below it).
    pub chain_id: Digest,
}

/// Which labs an image is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllLabs,
    Lab(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub images: Vec<ImageRecord>,
}

/// What `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Only a name went (the image keeps others).
    Untagged { name: String, id: Digest },
    /// Only the lab went from the image's labs.
    LabRemoved { lab: String, id: Digest },
    /// The whole record went.
    Deleted { id: Digest, names: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image {reference} is loaded for every lab; remove it without --lab")]
    EveryLab { reference: String },
    #[error("image {reference} is not loaded for lab {lab}")]
    NotForLab { reference: String, lab: String },
    #[error("{reference} matches several images ({ids}); use a longer ID")]
    Ambiguous { reference: String, ids: String },
}

impl ImageRecord {
    /// Whether a lab sees this image (`None`: asked from outside any lab).
    pub fn for_lab(&self, lab: Option<&str>) -> bool {
        match (&self.labs, lab) {
            (None, _) | (_, None) => true,
            (Some(labs), Some(lab)) => labs.contains(lab),
        }
    }
}

/// How a query names an image: a normalised reference (`docker.io/library/x:1`,
/// `repo@sha256:...`) or an image ID (`sha256:<hex>`, or at least 12 hex digits of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Name(String),
    Id(String),
}

impl Query {
    fn matches(&self, record: &ImageRecord) -> bool {
        match self {
            Query::Name(name) => {
                record.names.contains(name)
                    || record.repo_digests.contains(name)
                    // `repo:tag@digest`: the digest decides, as containerd does.
                    || name.split_once('@').is_some_and(|(repo_tag, digest)| {
                        let repo = strip_tag(repo_tag);
                        record.repo_digests.contains(&format!("{repo}@{digest}"))
                    })
            }
            Query::Id(hex) => record.id.hex().starts_with(hex.as_str()),
        }
    }
}

/// `registry/repo:tag` → `registry/repo` (a port's colon comes before the last `/`).
pub fn strip_tag(reference: &str) -> &str {
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    }
}

impl Index {
    /// The images a query names that a lab sees.
    pub fn find(&self, query: &Query, lab: Option<&str>) -> Result<&ImageRecord, IndexError> {
        let found: Vec<&ImageRecord> = self
            .images
            .iter()
            .filter(|r| query.matches(r) && r.for_lab(lab))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(IndexError::NotFound(query.shown())),
            many => Err(IndexError::Ambiguous {
                reference: query.shown(),
                ids: many
                    .iter()
                    .map(|r| r.id.short())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Add an image (or more names, digests and labs to one already there). A name moves
    /// to the new image, as a re-tag does in docker; the old image keeps its layers until
    /// it is removed or collected.
    pub fn add(&mut self, mut record: ImageRecord, scope: &Scope) -> &ImageRecord {
        for other in self.images.iter_mut().filter(|r| r.id != record.id) {
            other.names.retain(|n| !record.names.contains(n));
        }
        let labs_of = |scope: &Scope| match scope {
            Scope::AllLabs => None,
            Scope::Lab(lab) => Some(BTreeSet::from([lab.clone()])),
        };
        let index = match self.images.iter().position(|r| r.id == record.id) {
            Some(i) => {
                let existing = &mut self.images[i];
                existing.names.append(&mut record.names);
                existing.repo_digests.append(&mut record.repo_digests);
                existing.manifests.append(&mut record.manifests);
                existing.labs = match (existing.labs.take(), scope) {
                    (None, _) | (_, Scope::AllLabs) => None,
                    (Some(mut labs), Scope::Lab(lab)) => {
                        labs.insert(lab.clone());
                        Some(labs)
                    }
                };
                i
            }
            None => {
                record.labs = labs_of(scope);
                let id = record.id.clone();
                self.images.push(record);
                self.images.sort_by(|a, b| a.id.cmp(&b.id));
                self.images
                    .iter()
                    .position(|r| r.id == id)
                    .expect("just added")
            }
        };
        &self.images[index]
    }

    /// Remove what a query names: with a lab, that lab from the image's labs (the image goes
    /// when no lab is left); by name, that name (the image goes with its last name); by ID,
    /// the whole image.
    pub fn remove(&mut self, query: &Query, lab: Option<&str>) -> Result<Removal, IndexError> {
        let id = self.find(query, lab)?.id.clone();
        let i = self
            .images
            .iter()
            .position(|r| r.id == id)
            .expect("found above");
        let record = &mut self.images[i];
        if let Some(lab) = lab {
            let reference = query.shown();
            let Some(labs) = record.labs.as_mut() else {
                return Err(IndexError::EveryLab { reference });
            };
            if !labs.remove(lab) {
                return Err(IndexError::NotForLab {
                    reference,
                    lab: lab.to_string(),
                });
            }
            if !labs.is_empty() {
                return Ok(Removal::LabRemoved {
                    lab: lab.to_string(),
                    id,
                });
            }
        } else if let Query::Name(name) = query
            && record.names.len() > 1
            && record.names.contains(name)
        {
            record.names.remove(name);
            return Ok(Removal::Untagged {
                name: name.clone(),
                id,
            });
        }
        let gone = self.images.remove(i);
        Ok(Removal::Deleted {
            id: gone.id,
            names: gone.names.into_iter().collect(),
        })
    }
}

impl Query {
    pub fn shown(&self) -> String {
        match self {
            Query::Name(n) | Query::Id(n) => n.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, names: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(id.as_bytes()),
            names: names.iter().map(|n| n.to_string()).collect(),
            repo_digests: BTreeSet::new(),
            manifests: BTreeSet::new(),
            labs: None,
            layers: Vec::new(),
            size: 0,
            added: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn name(n: &str) -> Query {
        Query::Name(n.to_string())
    }

    #[test]
    fn a_name_moves_to_the_newer_image_and_labs_merge() {
        let mut index = Index::default();
        index.add(
            record("a", &["r/x:1", "r/x:2"]),
            &Scope::Lab("alpha".into()),
        );
        index.add(record("b", &["r/x:1"]), &Scope::Lab("beta".into()));
        let a = index.find(&name("r/x:2"), None).unwrap();
        assert_eq!(a.names, BTreeSet::from(["r/x:2".to_string()]));
        assert_eq!(
            index.find(&name("r/x:1"), None).unwrap().id,
            Digest::of(b"b")
        );
        // Labs: the same image loaded for another lab, then for every lab.
        index.add(record("a", &[]), &Scope::Lab("gamma".into()));
        let labs = index
            .find(&name("r/x:2"), None)
            .unwrap()
            .labs
            .clone()
            .unwrap();
        assert_eq!(
            labs,
            BTreeSet::from(["alpha".to_string(), "gamma".to_string()])
        );
        assert!(index.find(&name("r/x:2"), Some("beta")).is_err());
        assert!(index.find(&name("r/x:2"), Some("gamma")).is_ok());
        index.add(record("a", &[]), &Scope::AllLabs);
        assert_eq!(index.find(&name("r/x:2"), Some("beta")).unwrap().labs, None);
        index.add(record("a", &[]), &Scope::Lab("delta".into()));
        assert_eq!(index.find(&name("r/x:2"), None).unwrap().labs, None);
    }

    #[test]
    fn find_by_id_prefix_and_repo_digest() {
        let mut index = Index::default();
        let mut r = record("a", &["reg/x:1"]);
        let manifest = Digest::of(b"manifest");
        r.repo_digests.insert(format!("reg/x@{manifest}"));
        index.add(r, &Scope::AllLabs);
        let id = Digest::of(b"a");
        assert!(index.find(&Query::Id(id.hex()[..12].into()), None).is_ok());
        assert!(
            index
                .find(&name(&format!("reg/x@{manifest}")), None)
                .is_ok()
        );
        assert!(
            index
                .find(&name(&format!("reg/x:other@{manifest}")), None)
                .is_ok()
        );
        assert!(matches!(
            index.find(&name("reg/x:2"), None),
            Err(IndexError::NotFound(_))
        ));
        assert_eq!(strip_tag("reg:5000/x:1"), "reg:5000/x");
        assert_eq!(strip_tag("reg:5000/x"), "reg:5000/x");
    }

    #[test]
    fn remove_untags_then_deletes_and_respects_labs() {
        let mut index = Index::default();
        index.add(
            record("a", &["r/x:1", "r/x:2"]),
            &Scope::Lab("alpha".into()),
        );
        index.add(record("a", &[]), &Scope::Lab("beta".into()));
        assert_eq!(
            index.remove(&name("r/x:1"), None).unwrap(),
            Removal::Untagged {
                name: "r/x:1".into(),
                id: Digest::of(b"a")
            }
        );
        assert!(matches!(
            index.remove(&name("r/x:2"), Some("gamma")),
            Err(IndexError::NotFound(_))
        ));
        assert_eq!(
            index.remove(&name("r/x:2"), Some("alpha")).unwrap(),
            Removal::LabRemoved {
                lab: "alpha".into(),
                id: Digest::of(b"a")
            }
        );
        assert!(matches!(
            index.remove(&name("r/x:2"), Some("beta")).unwrap(),
            Removal::Deleted { .. }
        ));
        assert!(index.images.is_empty());
        index.add(record("b", &["r/y:1"]), &Scope::AllLabs);
        assert!(matches!(
            index.remove(&name("r/y:1"), Some("alpha")),
            Err(IndexError::EveryLab { .. })
        ));
    }
}
