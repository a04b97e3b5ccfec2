/* model: md_utf8_valid_prefix (RFC 3629) against hand-picked sequences and,
 * exhaustively for short strings, against utf8proc's strict decoder. */
#include "model/md.h"

#include <criterion/criterion.h>
#include <string.h>
#include <utf8proc.h>

static size_t vp(const char *s)
{
	return md_utf8_valid_prefix(s, strlen(s));
}

Test(utf8, valid_text)
{
	cr_assert_eq(md_utf8_valid_prefix("", 0), 0);
	cr_assert_eq(md_utf8_valid_prefix(NULL, 0), 0);
	cr_assert_eq(vp("plain ascii ~"), 13);
	cr_assert_eq(md_utf8_valid_prefix("a\0b", 3), 3);       /* NUL is a character */
	cr_assert_eq(vp("\xc2\x80"), 2);                         /* U+0080 */
	cr_assert_eq(vp("\xdf\xbf"), 2);                         /* U+07FF */
	cr_assert_eq(vp("\xe0\xa0\x80"), 3);                     /* U+0800 */
	cr_assert_eq(vp("\xed\x9f\xbf"), 3);                     /* U+D7FF */
	cr_assert_eq(vp("\xee\x80\x80"), 3);                     /* U+E000 */
	cr_assert_eq(vp("\xef\xbf\xbf"), 3);                     /* U+FFFF */
	cr_assert_eq(vp("\xf0\x90\x80\x80"), 4);                 /* U+10000 */
	cr_assert_eq(vp("\xf4\x8f\xbf\xbf"), 4);                 /* U+10FFFF */
	cr_assert_eq(vp("caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80"), 17);
}

Test(utf8, invalid_sequences_stop_the_prefix)
{
	/* overlong forms */
	cr_assert_eq(vp("ab\xc0\x80"), 2);
	cr_assert_eq(vp("ab\xc1\xbf"), 2);
	cr_assert_eq(vp("ab\xe0\x80\x80"), 2);
	cr_assert_eq(vp("ab\xe0\x9f\xbf"), 2);
	cr_assert_eq(vp("ab\xf0\x80\x80\x80"), 2);
	cr_assert_eq(vp("ab\xf0\x8f\xbf\xbf"), 2);
	/* UTF-16 surrogates */
	cr_assert_eq(vp("ab\xed\xa0\x80"), 2);
	cr_assert_eq(vp("ab\xed\xbf\xbf"), 2);
	cr_assert_eq(vp("\xed\xb0\x80"), 0);
	/* above U+10FFFF and bytes that never occur */
	cr_assert_eq(vp("ab\xf4\x90\x80\x80"), 2);
	cr_assert_eq(vp("ab\xf5\x80\x80\x80"), 2);
	cr_assert_eq(vp("ab\xf7\xbf\xbf\xbf"), 2);
	cr_assert_eq(vp("ab\xf8\x88\x80\x80\x80"), 2);
	cr_assert_eq(vp("ab\xfe"), 2);
	cr_assert_eq(vp("ab\xff"), 2);
	/* lone continuation bytes and bad continuations */
	cr_assert_eq(vp("ab\x80"), 2);
	cr_assert_eq(vp("ab\xbf"), 2);
	cr_assert_eq(vp("abc \xc3\x28"), 4);
	cr_assert_eq(vp("\xe2\x82\x41"), 0);
	cr_assert_eq(vp("\xf0\x9f\x98\x41"), 0);
	/* truncated at the end of the buffer */
	cr_assert_eq(vp("ab\xc3"), 2);
	cr_assert_eq(vp("ab\xe2\x82"), 2);
	cr_assert_eq(vp("ab\xf0\x9f\x98"), 2);
	cr_assert_eq(md_utf8_valid_prefix("\xc3\xa9", 1), 0);
	cr_assert_eq(md_utf8_valid_prefix("x\xf0\x9f\x98\x80", 4), 1);
	/* the fixture's invalid_utf8 input */
	cr_assert_eq(vp("abc \xff\xfe def \xc3\x28"), 4);
}

/* utf8proc_iterate rejects overlongs, surrogates and > U+10FFFF: the reference. */
static size_t ref_prefix(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
		if (k <= 0)
			break;
		i += (size_t)k;
	}
	return i;
}

/* Loops test with `if`: meson runs Criterion with --full-stats, which makes every
 * passing cr_assert costly. */
static void check_same(const unsigned char *s, size_t n)
{
	size_t got = md_utf8_valid_prefix((const char *)s, n), want = ref_prefix(s, n);
	if (got != want)
		cr_assert_fail("%02x %02x %02x %02x (first %zu bytes): prefix %zu, utf8proc says %zu",
			       s[0], n > 1 ? s[1] : 0, n > 2 ? s[2] : 0, n > 3 ? s[3] : 0, n, got,
			       want);
}

Test(utf8, every_short_string_matches_utf8proc)
{
	unsigned char s[4];
	for (unsigned a = 0; a < 256; a++) {
		s[0] = (unsigned char)a;
		check_same(s, 1);
		for (unsigned b = 0; b < 256; b++) {
			s[1] = (unsigned char)b;
			check_same(s, 2);
			if (a < 0xc0)
				continue;  /* a 1-byte start: the 2-byte check covers the rest */
			for (unsigned c = 0; c < 256; c++) {
				s[2] = (unsigned char)c;
				check_same(s, 3);
			}
		}
	}
	/* four-byte leads with every second byte and edge continuations */
	static const unsigned char tails[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0xbf, 0xc0, 0xff};
	for (unsigned a = 0xf0; a < 0x100; a++)
		for (unsigned b = 0; b < 256; b++)
			for (size_t c = 0; c < sizeof(tails); c++)
				for (size_t d = 0; d < sizeof(tails); d++) {
					s[0] = (unsigned char)a;
					s[1] = (unsigned char)b;
					s[2] = tails[c];
					s[3] = tails[d];
					check_same(s, 4);
				}
}

Test(utf8, every_code_point_is_valid)
{
	unsigned char buf[8];
	for (utf8proc_int32_t cp = 0; cp <= 0x10ffff; cp++) {
		if (cp >= 0xd800 && cp <= 0xdfff)
			continue;
		size_t n = (size_t)utf8proc_encode_char(cp, buf);
		if (md_utf8_valid_prefix((char *)buf, n) != n)
			cr_assert_fail("U+%04X is not accepted", cp);
		/* and every proper prefix of it stops at 0 */
		for (size_t k = 1; k < n; k++)
			if (md_utf8_valid_prefix((char *)buf, k) != 0)
				cr_assert_fail("U+%04X cut at %zu is accepted", cp, k);
	}
}
