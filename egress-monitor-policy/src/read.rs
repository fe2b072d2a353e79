//! The one step of this crate that reads files: a policy file (bounded), and the service tags
//! file its `[service_tags]` names. Everything else parses and checks text it is given.

use std::{io::Read as _, path::Path};

use crate::{
    MAX_FILE_BYTES, PolicyError, PolicyFile,
    service_tags::{ServiceTags, TagError},
};

impl PolicyFile {
    /// Reads, parses and resolves the file at `path`, refusing one over [`MAX_FILE_BYTES`]
    /// unread; a `[service_tags]` file is read relative to the policy file's directory.
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyError> {
        let unreadable = |source| PolicyError::Read {
            path: path.to_owned(),
            source,
        };
        let too_large = |size| PolicyError::TooLarge {
            path: path.to_owned(),
            size,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        if size > MAX_FILE_BYTES {
            return Err(too_large(size));
        }
        // The size a file states is not always what it holds (/proc files say 0, a file may
        // grow while it is read), so the read is bounded too.
        let mut bytes = Vec::new();
        let read = file
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if read as u64 > MAX_FILE_BYTES {
            return Err(too_large(read as u64));
        }
        let text = String::from_utf8(bytes)
            .map_err(|err| unreadable(std::io::Error::new(std::io::ErrorKind::InvalidData, err)))?;
        Self::parse(path, &text)?.resolve(|tags| std::fs::read_to_string(tags))
    }
}

impl ServiceTags {
    /// Reads and parses a service tags file (`ServiceTags_Public.json`).
    pub fn load(path: &Path) -> Result<ServiceTags, TagError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TagError::Read {
            path: name.clone(),
            source,
        })?;
        ServiceTags::parse(&name, &text)
    }
}
