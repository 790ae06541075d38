"""Photo keys and reasons in markdown artifacts are shown as text, never as markup."""

from __future__ import annotations

from markdown_it import MarkdownIt

from operations import markdown


def rendered(text: str) -> str:
    return MarkdownIt().render(text)


def test_keys_with_markdown_characters_render_as_written():
    for key in ("a*b*c.jpg", "[link](http://x).png", "<script>.jpg", "x_y_.png", "# h.jpg"):
        html = rendered(markdown.escape(key))
        assert "<em>" not in html and "<a " not in html and "<script>" not in html
        assert "<h1>" not in html, html


def test_code_spans_survive_backticks():
    for key in ("a`b.jpg", "``x``.png", "`edge.jpg`"):
        html = rendered(f"- {markdown.code(key)}")
        assert html.count("<code>") == 1, html
        assert key.replace("&", "&amp;") in html.replace("&lt;", "<").replace("&gt;", ">")
