//! Tiles: paths of hash tiles and entry bundles, the tile plan of a tree, and building
//! the hash tiles from leaf hashes.

use super::{ExportError, TILE_DIR, TILE_WIDTH};
use crate::ledger::merkle::Frontier;
use crate::ledger::proof::Hash;

/// Which tile sequence a tile belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TileLevel {
    /// Hash tiles of level `l` (0 = leaf hashes).
    Hashes(u8),
    /// Entry bundles (same indexing and widths as level-0 hash tiles).
    Entries,
}

/// One hash tile or entry bundle of a tiled log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tile {
    /// Level (or entry bundle).
    pub level: TileLevel,
    /// Tile index `N` within its level.
    pub index: u64,
    /// Number of hashes (or entries): 256 for a full tile, 1..=255 for a partial one.
    pub width: u16,
}

/// The `<N>` path of a tile index: zero-padded 3-digit elements, all but the last prefixed
/// with `x` (`1234067` → `x001/x234/067`, `5` → `005`).
pub fn tile_index_path(index: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = index;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| {
            if i == last {
                format!("{g:03}")
            } else {
                format!("x{g:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Tile {
    /// Whether the tile holds fewer than 256 hashes.
    pub fn is_partial(&self) -> bool {
        u64::from(self.width) < TILE_WIDTH
    }

    /// The tile's path relative to the export directory, e.g. `tile/0/x001/067.p/5` or
    /// `tile/entries/000`.
    pub fn path(&self) -> String {
        let level = match self.level {
            TileLevel::Hashes(l) => l.to_string(),
            TileLevel::Entries => "entries".to_owned(),
        };
        let mut p = format!("{TILE_DIR}/{level}/{}", tile_index_path(self.index));
        if self.is_partial() {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path made by [`Tile::path`]; only the canonical spelling is accepted.
    pub fn from_path(path: &str) -> Option<Tile> {
        let rest = path.strip_prefix(TILE_DIR)?.strip_prefix('/')?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        let level = match *parts.first()? {
            "entries" => TileLevel::Entries,
            l => TileLevel::Hashes(l.parse().ok()?),
        };
        parts.remove(0);
        let mut width = TILE_WIDTH as u16;
        if parts.len() >= 2 && parts[parts.len() - 2].ends_with(".p") {
            width = parts.pop()?.parse().ok()?;
            let last = parts.last_mut()?;
            *last = last.strip_suffix(".p")?;
        }
        let mut index: u64 = 0;
        for part in &parts {
            let digits = part.strip_prefix('x').unwrap_or(part);
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let group: u64 = digits.parse().ok()?;
            index = index.checked_mul(1000)?.checked_add(group)?;
        }
        let tile = Tile {
            level,
            index,
            width,
        };
        (width >= 1 && tile.path() == path).then_some(tile)
    }
}

/// Number of hashes at `level` of a tree of `size` leaves (`size / 256^level`).
fn level_count(size: u64, level: u8) -> u64 {
    size.checked_shr(8 * u32::from(level)).unwrap_or(0)
}

/// Width of tile `index` at `level` for a tree of `size` leaves, or `None` if the tree has no
/// such tile (empty tiles are not part of a tiled log).
pub fn tile_width(size: u64, level: TileLevel, index: u64) -> Option<u16> {
    let count = match level {
        TileLevel::Hashes(l) => level_count(size, l),
        TileLevel::Entries => size,
    };
    let start = index.checked_mul(TILE_WIDTH)?;
    (start < count).then(|| (count - start).min(TILE_WIDTH) as u16)
}

/// Every hash tile of a tree of `size` leaves, level by level, in index order.
pub fn plan_tiles(size: u64) -> impl Iterator<Item = Tile> {
    (0u8..8).flat_map(move |l| {
        let count = level_count(size, l);
        (0..count.div_ceil(TILE_WIDTH)).map(move |n| Tile {
            level: TileLevel::Hashes(l),
            index: n,
            width: (count - n * TILE_WIDTH).min(TILE_WIDTH) as u16,
        })
    })
}

/// Every entry bundle of a tree of `size` leaves, in index order.
pub fn plan_bundles(size: u64) -> impl Iterator<Item = Tile> {
    (0..size.div_ceil(TILE_WIDTH)).map(move |n| Tile {
        level: TileLevel::Entries,
        index: n,
        width: (size - n * TILE_WIDTH).min(TILE_WIDTH) as u16,
    })
}

/// Root of a full tile: the perfect tree over its 256 hashes (a [`Frontier`] fed the hashes
/// as if they were leaf hashes merges them exactly so).
fn full_tile_root(hashes: &[Hash]) -> Hash {
    let mut f = Frontier::new();
    for h in hashes {
        f.push(*h);
    }
    f.root()
}

/// Callback receiving each completed tile and its hashes.
pub(super) type TileSink<'a> = dyn FnMut(Tile, &[Hash]) -> Result<(), ExportError> + 'a;

/// Builds the hash tiles of a tree from its leaf hashes, one tile per level in memory.
#[derive(Default)]
pub(super) struct TileBuilder {
    levels: Vec<Vec<Hash>>,
    next_index: Vec<u64>,
}

impl TileBuilder {
    /// Adds the next leaf hash; emits every tile it completes (a level-0 tile, then possibly
    /// the level-1 tile its root completes, and so on).
    pub(super) fn push(&mut self, leaf: Hash, sink: &mut TileSink<'_>) -> Result<(), ExportError> {
        let mut hash = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::with_capacity(TILE_WIDTH as usize));
                self.next_index.push(0);
            }
            let buf = &mut self.levels[level];
            buf.push(hash);
            if (buf.len() as u64) < TILE_WIDTH {
                return Ok(());
            }
            let tile = Tile {
                level: TileLevel::Hashes(level as u8),
                index: self.next_index[level],
                width: TILE_WIDTH as u16,
            };
            sink(tile, buf)?;
            hash = full_tile_root(buf);
            buf.clear();
            self.next_index[level] += 1;
            level += 1;
        }
    }

    /// Emits the partial tiles, lowest level first.
    pub(super) fn finish(self, sink: &mut TileSink<'_>) -> Result<(), ExportError> {
        for (level, buf) in self.levels.iter().enumerate() {
            if !buf.is_empty() {
                let tile = Tile {
                    level: TileLevel::Hashes(level as u8),
                    index: self.next_index[level],
                    width: buf.len() as u16,
                };
                sink(tile, buf)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_index_paths_follow_tlog_tiles() {
        assert_eq!(tile_index_path(0), "000");
        assert_eq!(tile_index_path(5), "005");
        assert_eq!(tile_index_path(999), "999");
        assert_eq!(tile_index_path(1000), "x001/000");
        assert_eq!(tile_index_path(1_234_067), "x001/x234/067");
        assert_eq!(
            tile_index_path(u64::MAX),
            "x018/x446/x744/x073/x709/x551/615"
        );
        let t = |level, index, width| Tile {
            level,
            index,
            width,
        };
        assert_eq!(
            t(TileLevel::Hashes(0), 1_234_067, 256).path(),
            "tile/0/x001/x234/067"
        );
        assert_eq!(t(TileLevel::Hashes(2), 5, 1).path(), "tile/2/005.p/1");
        assert_eq!(
            t(TileLevel::Entries, 1000, 17).path(),
            "tile/entries/x001/000.p/17"
        );
        for tile in [
            t(TileLevel::Hashes(0), 1_234_067, 256),
            t(TileLevel::Hashes(7), 0, 255),
            t(TileLevel::Entries, 1000, 17),
            t(TileLevel::Entries, u64::MAX, 1),
        ] {
            assert_eq!(Tile::from_path(&tile.path()), Some(tile));
        }
        for bad in [
            "tile/0/5",
            "tile/0/0005",
            "tile/0/x000/005",
            "tile/0/x005",
            "tile/0/001/002",
            "tile/0/005.p/0",
            "tile/0/005.p/05",
            "tile/0/005.p/256",
            "tile/0/005.p/300",
            "tile/00/005",
            "tile/x/005",
            "tile/entries",
            "tile/0/005.p",
            "tiles/0/005",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
        ] {
            assert_eq!(Tile::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn tile_plan_for_70000_entries() {
        let tiles: Vec<Tile> = plan_tiles(70_000).collect();
        let level = |l| -> Vec<&Tile> {
            tiles
                .iter()
                .filter(|t| t.level == TileLevel::Hashes(l))
                .collect()
        };
        let l0 = level(0);
        assert_eq!(l0.len(), 274);
        assert_eq!(l0.iter().filter(|t| !t.is_partial()).count(), 273);
        assert_eq!(l0[273].path(), "tile/0/273.p/112");
        let l1: Vec<String> = level(1).iter().map(|t| t.path()).collect();
        assert_eq!(l1, ["tile/1/000", "tile/1/001.p/17"]);
        let l2: Vec<String> = level(2).iter().map(|t| t.path()).collect();
        assert_eq!(l2, ["tile/2/000.p/1"]);
        assert_eq!(tiles.len(), 277);
        let bundles: Vec<Tile> = plan_bundles(70_000).collect();
        assert_eq!(bundles.len(), 274);
        assert_eq!(bundles[273].path(), "tile/entries/273.p/112");
        assert_eq!(tile_width(70_000, TileLevel::Hashes(1), 1), Some(17));
        assert_eq!(tile_width(70_000, TileLevel::Hashes(1), 2), None);
        assert_eq!(tile_width(70_000, TileLevel::Hashes(3), 0), None);
        assert_eq!(tile_width(70_000, TileLevel::Entries, 273), Some(112));
        // The plan agrees with the width function everywhere.
        for t in tiles.iter().chain(&bundles) {
            assert_eq!(
                tile_width(70_000, t.level, t.index),
                Some(t.width),
                "{}",
                t.path()
            );
        }
    }

    #[test]
    fn tile_plan_for_small_and_huge_sizes() {
        let paths = |size| plan_tiles(size).map(|t| t.path()).collect::<Vec<_>>();
        assert!(paths(0).is_empty());
        assert_eq!(plan_bundles(0).count(), 0);
        assert_eq!(paths(1), ["tile/0/000.p/1"]);
        assert_eq!(paths(255), ["tile/0/000.p/255"]);
        assert_eq!(paths(256), ["tile/0/000", "tile/1/000.p/1"]);
        assert_eq!(
            paths(257),
            ["tile/0/000", "tile/0/001.p/1", "tile/1/000.p/1"]
        );
        // Level 7 exists for the largest sizes, and nothing overflows.
        assert_eq!(tile_width(u64::MAX, TileLevel::Hashes(7), 0), Some(255));
        assert_eq!(tile_width(u64::MAX, TileLevel::Hashes(8), 0), None);
        assert_eq!(tile_width(u64::MAX, TileLevel::Entries, u64::MAX), None);
    }
}
