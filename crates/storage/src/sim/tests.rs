use std::path::PathBuf;

use super::*;
use crate::fs::{create_dir_all_durably, remove_dir_all_durably};

fn dirs_of(fs: &SimFileSystem, path: &str) -> Vec<String> {
    fs.list_dir(Path::new(path)).unwrap()
}

#[test]
fn a_directory_whose_parent_was_not_synced_vanishes_with_what_it_holds() {
    let fs = SimFileSystem::new();
    fs.create_dir(Path::new("/a")).unwrap();
    fs.create_dir(Path::new("/a/b")).unwrap();
    let file = fs.open(Path::new("/a/b/f"), OpenMode::CreateNew).unwrap();
    file.write_all_at(b"x", 0).unwrap();
    file.sync_data().unwrap();
    // `b` and `f` are durable in their directories, but `a` is not in the root.
    fs.sync_dir(Path::new("/a/b")).unwrap();
    fs.sync_dir(Path::new("/a")).unwrap();
    fs.crash();
    assert!(!fs.exists(Path::new("/a")).unwrap());
    assert!(!fs.exists(Path::new("/a/b/f")).unwrap());

    create_dir_all_durably(&fs, Path::new("/a/b")).unwrap();
    fs.crash();
    assert!(fs.exists(Path::new("/a/b")).unwrap());
}

#[test]
fn a_renamed_directory_keeps_its_entries_and_an_unsynced_removal_comes_back() {
    let fs = SimFileSystem::new();
    create_dir_all_durably(&fs, Path::new("/base/1.tmp")).unwrap();
    fs.write(Path::new("/base/1.tmp/f"), b"x");
    fs.rename(Path::new("/base/1.tmp"), Path::new("/base/1")).unwrap();
    assert_eq!(fs.read(Path::new("/base/1/f")).unwrap(), b"x");
    fs.crash();
    assert_eq!(dirs_of(&fs, "/base"), ["1.tmp"], "the rename was not synced");
    fs.rename(Path::new("/base/1.tmp"), Path::new("/base/1")).unwrap();
    fs.sync_dir(Path::new("/base")).unwrap();
    fs.crash();
    assert_eq!(dirs_of(&fs, "/base"), ["1"]);
    assert_eq!(fs.read(Path::new("/base/1/f")).unwrap(), b"x");

    fs.remove_file(Path::new("/base/1/f")).unwrap();
    fs.remove_dir(Path::new("/base/1")).unwrap();
    fs.crash();
    assert_eq!(fs.read(Path::new("/base/1/f")).unwrap(), b"x", "nothing was synced");
    remove_dir_all_durably(&fs, Path::new("/base/1")).unwrap();
    fs.crash();
    assert_eq!(dirs_of(&fs, "/base"), Vec::<String>::new());
}

/// Halted at every step of a durable creation, and then crashed (all unsynced changes
/// lost, or each kept or lost by a seed), the disk holds every directory that was reported
/// made, and nothing below a directory it lost.
#[test]
fn a_crash_at_any_step_of_a_creation_loses_no_directory_reported_made() {
    let targets = ["/data/topics/a/0", "/data/internal/producer-ids/0", "/data/topics/b"];
    let run = |halt: Option<u64>, seed: Option<u64>| {
        let fs = SimFileSystem::new();
        create_dir_all_durably(&fs, Path::new("/data")).unwrap();
        let steps_before = fs.steps();
        if let Some(steps) = halt {
            fs.halt_after_steps(steps);
        }
        let mut made: Vec<PathBuf> = Vec::new();
        for target in targets {
            if create_dir_all_durably(&fs, Path::new(target)).is_ok() {
                made.extend(Path::new(target).ancestors().map(Path::to_path_buf));
            }
        }
        let steps = fs.steps() - steps_before;
        match seed {
            Some(seed) => fs.crash_seeded(seed),
            None => fs.crash(),
        }
        for dir in &made {
            assert!(fs.exists(dir).unwrap(), "{} was made, then lost", dir.display());
        }
        steps
    };
    let steps = run(None, None);
    assert!(steps >= 14, "{steps} steps: a creation and a sync per directory");
    for halt in 0..=steps {
        run(Some(halt), None);
        for seed in 0..8 {
            let replay = format!("halt after {halt} steps, crash seed {seed}");
            let outcome = std::panic::catch_unwind(|| run(Some(halt), Some(seed)));
            assert!(outcome.is_ok(), "failed at {replay}");
        }
    }
}
