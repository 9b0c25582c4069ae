//! The first bytes of a file the dynamic loader refused, read to say why in words that help:
//! the loader's own are about the symptom ("invalid ELF header"), and glibc answers a library
//! for another machine with "cannot open shared object file: No such file or directory". Reads
//! the first 20 bytes of the file and of the running gateway's executable.

use std::{io::Read, path::Path};

/// What a file's ELF header says about loading it here.
pub(super) enum Inspected {
    /// It is no ELF file at all: what it seems to be instead.
    NotALibrary(&'static str),
    /// An ELF file for another machine than the gateway's.
    ForAnotherMachine {
        /// The file's machine (`aarch64 (64-bit ARM)`).
        found: String,
        /// The gateway's (`x86_64`).
        host: String,
    },
    /// An ELF file for this machine: the loader refused it for another reason.
    ForThisMachine,
}

/// Reads the ELF header of `file` (identification, type and machine: 20 bytes).
pub(super) fn inspect(file: &Path) -> Inspected {
    let head = head(file);
    if head.len() < 20 || !head.starts_with(b"\x7fELF") {
        return Inspected::NotALibrary(if head.is_empty() {
            "it is empty"
        } else if head
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            "it begins with text"
        } else {
            "it has no ELF header"
        });
    }
    let ours = std::env::current_exe()
        .map(|exe| self::head(&exe))
        .unwrap_or_default();
    // Class (32 or 64 bits) and machine; the byte order goes with the machine.
    if ours.len() == 20 && (head[4], &head[18..20]) != (ours[4], &ours[18..20]) {
        return Inspected::ForAnotherMachine {
            found: machine(&head),
            host: machine(&ours),
        };
    }
    Inspected::ForThisMachine
}

/// The first 20 bytes of `file` (fewer if it is shorter or cannot be read).
fn head(file: &Path) -> Vec<u8> {
    let mut head = Vec::with_capacity(20);
    let _ = std::fs::File::open(file).and_then(|f| f.take(20).read_to_end(&mut head));
    head
}

/// The machine an ELF header is for, for a message: `x86_64`, `aarch64 (64-bit ARM)`.
fn machine(head: &[u8]) -> String {
    let machine = if head[5] == 2 {
        u16::from_be_bytes([head[18], head[19]])
    } else {
        u16::from_le_bytes([head[18], head[19]])
    };
    let bits = if head[4] == 1 { 32 } else { 64 };
    match (machine, bits) {
        (3, _) => "x86 (32-bit)".into(),
        (62, 64) => "x86_64".into(),
        (40, _) => "32-bit ARM (armhf)".into(),
        (183, _) => "aarch64 (64-bit ARM)".into(),
        (243, b) => format!("riscv{b}"),
        (m, b) => format!("ELF machine {m} ({b}-bit)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_bytes(bytes: &[u8]) -> Inspected {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lib.so");
        std::fs::write(&file, bytes).unwrap();
        inspect(&file)
    }

    #[test]
    fn tells_text_and_other_bytes_from_a_library() {
        for (bytes, what) in [
            (&b""[..], "it is empty"),
            (b"this is not a shared library", "it begins with text"),
            (b"\x7fELF", "it has no ELF header"),
            (
                &[
                    0u8, 1, 2, 3, 200, 201, 202, 203, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
                ],
                "it has no ELF header",
            ),
        ] {
            match inspect_bytes(bytes) {
                Inspected::NotALibrary(w) => assert_eq!(w, what, "{bytes:?}"),
                _ => panic!("{bytes:?} taken for an ELF file"),
            }
        }
    }

    #[test]
    fn names_the_machine_of_a_foreign_library_and_this_one() {
        let mut elf = head(&std::env::current_exe().unwrap());
        let ours = machine(&elf);
        // 32-bit ARM, as a Raspberry Pi OS build would be.
        elf[4] = 1;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&40u16.to_le_bytes());
        match inspect_bytes(&elf) {
            Inspected::ForAnotherMachine { found, host } => {
                assert_eq!(found, "32-bit ARM (armhf)");
                assert_eq!(host, ours);
            }
            _ => panic!("an ARM library taken for one of this machine"),
        }
        assert!(matches!(
            inspect_bytes(&head(&std::env::current_exe().unwrap())),
            Inspected::ForThisMachine
        ));
    }
}
