FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mlboard ./mlboard
COPY experiments ./experiments
RUN pip install --no-cache-dir .
COPY . .
RUN SECRET_KEY=build DEBUG=0 python manage.py collectstatic --noinput
RUN useradd --create-home mlboard
USER mlboard
EXPOSE 8000
CMD ["gunicorn", "mlboard.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-class", "gthread", "--threads", "8", "--access-logfile", "-"]
