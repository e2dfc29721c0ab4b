//! The Merkle tree of a batch (`docs/anchoring.md`): leaves in seq order,
//! pairs `(0,1), (2,3), …` per level, an unpaired last node promoted
//! unchanged, and proofs that skip the levels where the node is promoted.

use crate::cdm::node_hash;

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The root over `leaves`, computed in place (the slice is overwritten).
/// `None` for no leaves.
pub fn root_in_place(level: &mut [Hash]) -> Option<Hash> {
    let mut width = level.len();
    if width == 0 {
        return None;
    }
    while width > 1 {
        let pairs = width / 2;
        for i in 0..pairs {
            level[i] = node_hash(&level[2 * i], &level[2 * i + 1]);
        }
        if width % 2 == 1 {
            level[pairs] = level[width - 1];
        }
        width = width.div_ceil(2);
    }
    Some(level[0])
}

/// The root over `leaves`. `None` for no leaves.
pub fn root(leaves: &[Hash]) -> Option<Hash> {
    root_in_place(&mut leaves.to_vec())
}

/// Every level of a tree, kept to answer many proofs of one batch.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[0]` are the leaves, the last level is the root alone.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree over `leaves` (at least one).
    pub fn build(leaves: Vec<Hash>) -> Option<Self> {
        if leaves.is_empty() {
            return None;
        }
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("not empty");
            let mut up: Vec<Hash> = below
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            if below.len() % 2 == 1 {
                up.push(below[below.len() - 1]);
            }
            levels.push(up);
        }
        Some(Self { levels })
    }

    pub fn root(&self) -> Hash {
        self.levels.last().expect("at least one level")[0]
    }

    pub fn leaves(&self) -> &[Hash] {
        &self.levels[0]
    }

    /// The siblings of `position` from the bottom up, skipping levels
    /// where the node is the unpaired last one. `None` past the end.
    pub fn proof(&self, position: usize) -> Option<Vec<Hash>> {
        if position >= self.levels[0].len() {
            return None;
        }
        let mut proof = Vec::with_capacity(self.levels.len());
        let mut i = position;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                proof.push(level[sibling]);
            }
            i /= 2;
        }
        Some(proof)
    }
}

/// The root that `leaf` at `position` of a `count`-leaf batch leads to
/// through `proof`; `None` when the proof has the wrong length for that
/// position or the position is outside the batch.
pub fn fold(leaf: &Hash, position: u64, count: u64, proof: &[Hash]) -> Option<Hash> {
    if position >= count {
        return None;
    }
    let (mut h, mut i, mut width) = (*leaf, position, count);
    let mut siblings = proof.iter();
    while width > 1 {
        if i % 2 == 1 {
            h = node_hash(siblings.next()?, &h);
        } else if i + 1 < width {
            h = node_hash(&h, siblings.next()?);
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(h)
}

/// Whether `proof` leads `leaf` at `position` of a `count`-leaf batch to `root`.
pub fn verify(leaf: &Hash, position: u64, count: u64, proof: &[Hash], root: &Hash) -> bool {
    fold(leaf, position, count, proof).is_some_and(|r| r == *root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdm::keccak256;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| keccak256(&i.to_be_bytes())).collect()
    }

    /// The spec's definition, written as plainly as possible.
    fn reference_root(mut level: Vec<Hash>) -> Hash {
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|c| {
                    if c.len() == 2 {
                        node_hash(&c[0], &c[1])
                    } else {
                        c[0]
                    }
                })
                .collect();
        }
        level[0]
    }

    #[test]
    fn roots_agree_and_every_proof_verifies() {
        for n in 1..=70 {
            let l = leaves(n);
            let expected = reference_root(l.clone());
            assert_eq!(root(&l), Some(expected), "n = {n}");
            let tree = Tree::build(l.clone()).unwrap();
            assert_eq!(tree.root(), expected);
            for (p, leaf) in l.iter().enumerate() {
                let proof = tree.proof(p).unwrap();
                assert!(
                    verify(leaf, p as u64, n as u64, &proof, &expected),
                    "n {n} p {p}"
                );
                // Anything changed fails.
                assert!(!verify(
                    &keccak256(b"x"),
                    p as u64,
                    n as u64,
                    &proof,
                    &expected
                ));
                if n > 1 {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify(leaf, p as u64, n as u64, &bad, &expected));
                    let mut longer = proof.clone();
                    longer.push(expected);
                    assert!(!verify(leaf, p as u64, n as u64, &longer, &expected));
                    assert!(!verify(leaf, p as u64, n as u64, &proof[1..], &expected));
                    let other = (p + 1) % n;
                    if l[other] != *leaf {
                        assert!(!verify(leaf, other as u64, n as u64, &proof, &expected));
                    }
                }
            }
            assert_eq!(tree.proof(n), None);
            assert!(!verify(&l[0], n as u64, n as u64, &[], &expected));
        }
        assert_eq!(root(&[]), None);
    }

    #[test]
    fn one_leaf_is_its_own_root_and_odd_nodes_are_promoted_not_duplicated() {
        let l = leaves(3);
        assert_eq!(root(&l[..1]), Some(l[0]));
        assert_eq!(root(&l), Some(node_hash(&node_hash(&l[0], &l[1]), &l[2])));
        // Duplicating the last leaf would give [a, b, c, c] the same root.
        let dup = [l[0], l[1], l[2], l[2]];
        assert_ne!(root(&dup), root(&l));
        // The promoted leaf's proof skips the level it was promoted over.
        let tree = Tree::build(l.clone()).unwrap();
        assert_eq!(tree.proof(2).unwrap(), vec![node_hash(&l[0], &l[1])]);
    }
}
