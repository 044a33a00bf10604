from django import template
from django.utils.safestring import SafeString

from ..markdown import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str | None) -> SafeString:
    """`{{ card.statement|markdown }}`: the shared safe Markdown renderer."""
    return render_markdown(text)
